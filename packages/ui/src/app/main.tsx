import { render } from "preact";
import "./styles.css";
import icon from "./icon.svg";

render(
  <header>
    <img src={icon} alt="" /> Paddock
  </header>,
  document.getElementById("app") as HTMLElement,
);
