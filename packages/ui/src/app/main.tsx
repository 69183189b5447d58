import { render } from "preact";
import { App } from "./app.tsx";
import { start } from "./state.ts";
import "./styles.css";

render(<App />, document.getElementById("app") as HTMLElement);
void start();
