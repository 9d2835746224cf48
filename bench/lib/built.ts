// Benchmarks measure breakwater as users run it: the compiled JavaScript in dist/, which
// `npm run bench` builds first. Loading the TypeScript sources through tsx instead would charge
// breakwater for the transform's `keepNames`, a `__name()` call on every function and class it
// defines, closures made per request included: about 2 µs of CPU per proxied request, work the
// published package never does. The peers run from their published JavaScript too. Types come
// from src, so `npm run typecheck` needs no build.
import { existsSync } from 'node:fs'

const dist = new URL('../../dist/', import.meta.url)

/**
 * Imports a module of the built package, `path` relative to dist/ (`'cqrs/index.js'`), typed
 * as its source: `await built<typeof import('../src/cqrs/index.js')>('cqrs/index.js')`.
 */
export async function built<T>(path: string): Promise<T> {
  const url = new URL(path, dist)
  if (!existsSync(url)) {
    throw new Error(`${url.pathname} is missing: run \`npm run build\` (npm run bench does)`)
  }
  return (await import(url.href)) as T
}

/** The path of the built CLI, which the published package's `breakwater` bin runs. */
export const builtCli = new URL('cli/main.js', dist).pathname
