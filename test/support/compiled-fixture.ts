// Child processes of the crash tests run TypeScript fixtures that import src/. Started through
// `node --import tsx`, each spawn loaded tsx and transformed the fixture and every src module it
// imports again: about a second of CPU per process on an idle machine, many seconds on a loaded
// two-core one, and a crash test starts dozens. Here the fixture is bundled once per test file
// with the esbuild that tsx itself uses (the same transform, so the same code runs) into plain
// JavaScript that `node` starts directly. Packages stay external, so drivers (pg, better-sqlite3)
// load from node_modules exactly as before.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { basename, dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type BuildOptions, build, buildSync } from 'esbuild'

// Inside the repository, so that the bundle's bare imports resolve to its node_modules.
const cacheDir = fileURLToPath(
  new URL('../../node_modules/.cache/breakwater-fixtures/', import.meta.url),
)

const built = new Map<string, Promise<string>>()
const builtSync = new Map<string, string>()

/**
 * The path of a plain-JavaScript (ESM) bundle of the TypeScript file `entry` and the src modules
 * it imports, built on first use in this test process; start it with `node <path>`.
 */
export function compiledFixture(entry: string): Promise<string> {
  let path = built.get(entry)
  if (path === undefined) {
    path = build(bundleOptions(entry)).then((result) => save(entry, result.outputFiles[0]!))
    built.set(entry, path)
  }
  return path
}

/**
 * {@link compiledFixture}, built synchronously (for helpers that start a process synchronously,
 * such as the CLI's spawnCli), and split: each module `entry` imports dynamically stays a chunk
 * of its own, loaded only when it runs, as in the built package (one eager bundle of the whole
 * CLI takes as long to load as tsx). A folder of files named by their content.
 */
export function compiledFixtureSync(entry: string): string {
  let path = builtSync.get(entry)
  if (path === undefined) {
    const outdir = join(cacheDir, 'split')
    // .mjs: the folder is under node_modules, where no package.json says "module".
    const outExtension = { '.js': '.mjs' }
    const outputs = buildSync({
      ...bundleOptions(entry),
      splitting: true,
      outdir,
      outExtension,
    }).outputFiles
    const hash = createHash('sha256')
    for (const output of outputs) hash.update(output.path).update(output.contents)
    const name = basename(entry, '.ts')
    const folder = join(cacheDir, `${name}-${hash.digest('hex').slice(0, 16)}`)
    if (!existsSync(folder)) {
      // Written aside, then renamed: a test file starting a child meanwhile never sees half.
      const tmp = `${folder}.${process.pid}.tmp`
      for (const output of outputs) {
        const file = join(tmp, relative(outdir, output.path))
        mkdirSync(dirname(file), { recursive: true })
        writeFileSync(file, output.contents)
      }
      try {
        renameSync(tmp, folder)
      } catch (error) {
        // Another test file wrote the same folder first.
        rmSync(tmp, { recursive: true, force: true })
        if (!existsSync(folder)) throw error
      }
    }
    path = join(folder, `${name}.mjs`)
    builtSync.set(entry, path)
  }
  return path
}

function bundleOptions(entry: string) {
  return {
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    write: false,
    logLevel: 'silent',
  } as const satisfies BuildOptions
}

function save(entry: string, output: { contents: Uint8Array }): string {
  const code = output.contents
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
