// Child processes of the crash tests run TypeScript fixtures that import src/. Started through
// `node --import tsx`, each spawn loaded tsx and transformed the fixture and every src module it
// imports again: about a second of CPU per process on an idle machine, many seconds on a loaded
// two-core one, and a crash test starts dozens. Here the fixture is bundled once per test file
// with the esbuild that tsx itself uses (the same transform, so the same code runs) into plain
// JavaScript that `node` starts directly. Packages stay external, so drivers (pg, better-sqlite3)
// load from node_modules exactly as before.
import { createHash } from 'node:crypto'
import { mkdirSync, renameSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

// Inside the repository, so that the bundle's bare imports resolve to its node_modules.
const cacheDir = fileURLToPath(
  new URL('../../node_modules/.cache/breakwater-fixtures/', import.meta.url),
)

const built = new Map<string, Promise<string>>()

/**
 * The path of a plain-JavaScript (ESM) bundle of the TypeScript file `entry` and the src modules
 * it imports, built on first use in this test process; start it with `node <path>`.
 */
export function compiledFixture(entry: string): Promise<string> {
  let path = built.get(entry)
  if (path === undefined) {
    path = bundle(entry)
    built.set(entry, path)
  }
  return path
}

async function bundle(entry: string): Promise<string> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    write: false,
    logLevel: 'silent',
  })
  const code = result.outputFiles[0]!.contents
  // Named by content: test files running at once share a bundle, and none overwrites
  // another's while a child is loading it (each writes a file of its own, then renames).
  const hash = createHash('sha256').update(code).digest('hex').slice(0, 16)
  const file = join(cacheDir, `${basename(entry, '.ts')}-${hash}.mjs`)
  mkdirSync(cacheDir, { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, code)
  renameSync(tmp, file)
  return file
}
