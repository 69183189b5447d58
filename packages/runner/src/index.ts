export { LineSplitter } from "./line-splitter.ts";
