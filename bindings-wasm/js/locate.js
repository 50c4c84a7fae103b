// Where the WebAssembly module is when the caller gives no `wasmUrl`.
//
// Normally beside the wasm-bindgen glue (`dist/tidings_wasm_bg.wasm`), which finds it with
// `new URL('tidings_wasm_bg.wasm', import.meta.url)`: bundlers (Vite's build, esbuild, webpack 5) see that pattern
// and copy the file. Vite's dev server is the exception: it pre-bundles dependencies into
// `node_modules/.vite/deps/` without the files they reference (vitejs/vite#8427), so `import.meta.url` points
// there and the module is not found (the dev server answers with the page's HTML). From there, this package's own
// folder is `node_modules/@tidings/web/`, which the dev server serves: read the module from it, so that a Vite app
// needs no `optimizeDeps.exclude`.

/** `undefined` (the glue's default) unless this code runs pre-bundled by Vite's dev server. */
export function defaultWasmUrl() {
  const here = new URL(import.meta.url);
  const prebundled = here.pathname.match(/^(.*\/node_modules\/)\.vite\/deps[^/]*\//);
  return prebundled ? new URL(`${prebundled[1]}@tidings/web/dist/tidings_wasm_bg.wasm`, here) : undefined;
}
