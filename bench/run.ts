// `npm run bench -- <name>` runs bench/<name>.bench.ts, which measures breakwater and the peers
// its issue names side by side and writes bench/results/<name>.json.
import { existsSync, readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const available = readdirSync(here)
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.replace(/\.bench\.ts$/, ''))
const name = process.argv[2]
if (name === undefined || !available.includes(name)) {
  console.error(`usage: npm run bench -- <name>\navailable: ${available.join(', ') || '(none)'}`)
  process.exit(2)
}
const file = join(here, `${name}.bench.ts`)
if (!existsSync(file)) process.exit(2)
const module = (await import(pathToFileURL(file).href)) as {
  main: (args: string[]) => Promise<void>
}
await module.main(process.argv.slice(3))
