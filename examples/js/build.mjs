// Componentizes the JavaScript example guests with componentize-js.
//
//   node build.mjs [name ...]      (default: hello echo)
//
// Each <name>.js becomes ../<name>-js.wasm, built against ../wit/js-0.2.10
// (componentize-js 0.23 fixes its fetch-event handler at
// wasi:http/incoming-handler@0.2.10). Prints "built: examples/<name>-js.wasm <n> bytes" to stderr.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, rename } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const examples = join(here, '..');
const witPath = join(examples, 'wit', 'js-0.2.10');
const names = process.argv.length > 2 ? process.argv.slice(2) : ['hello', 'echo'];

for (const name of names) {
  const sourcePath = join(here, `${name}.js`);
  const out = join(examples, `${name}-js.wasm`);
  const { component } = await componentize({
    sourcePath,
    witPath,
    worldName: 'guest',
  });
  const tmp = `${out}.tmp`;
  await writeFile(tmp, component);
  await rename(tmp, out);
  process.stderr.write(`built: examples/${name}-js.wasm ${component.byteLength} bytes\n`);
}
