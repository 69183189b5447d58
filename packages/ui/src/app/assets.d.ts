/** An SVG imported by the app: esbuild copies it under a hashed name and gives its URL. */
declare module "*.svg" {
  const url: string;
  export default url;
}
/** A stylesheet imported by the app: esbuild bundles it into the build's one CSS file. */
declare module "*.css";
