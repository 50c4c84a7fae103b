// Type-checks every ```ts block of bindings-wasm/README.md against the package's declarations: each block becomes
// a module of its own in target/readme-snippets/ (blocks importing 'vite' are left to e2e/vite.mjs, which runs them), and
// `tsc` checks them with readme-helpers.d.ts. Fails when a block does not type-check, or when there is none.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const readme = readFileSync(join(here, '../README.md'), 'utf8');
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
const checked = blocks.filter((b) => !/from 'vite'/.test(b));
if (checked.length === 0) throw new Error('no ts block in bindings-wasm/README.md');
const out = resolve(process.env.TIDINGS_TARGET_DIR ?? join(here, '../../target'), 'readme-snippets');
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
const files = checked.map((block, i) => {
  const name = `snippet-${i + 1}.ts`;
  // `export {}` makes each block a module (top-level await, no shared globals between blocks).
  writeFileSync(join(out, name), `${block}\nexport {};\n`);
  return join(out, name);
});
writeFileSync(
  join(out, 'tsconfig.json'),
  JSON.stringify(
    {
      // The package's declarations through e2e/tsconfig.json's `paths` (resolved from that file).
      extends: join(here, 'tsconfig.json'),
      files: [join(here, 'readme-helpers.d.ts'), ...files],
    },
    null,
    2,
  ),
);
execFileSync(join(here, 'node_modules/.bin/tsc'), ['-p', join(out, 'tsconfig.json')], { stdio: 'inherit' });
console.log(`README snippets: ${checked.length} TypeScript blocks type-check`);
