// The folders of a SQLite file's path, looked at without creating anything: what the driver
// creates before it opens a file, what the CLI checks before it opens an existing one, and what
// `breakwater proxy --check` judges of a store URL all start from the same walk.
import { type Stats, statSync } from 'node:fs'
import { dirname } from 'node:path'

/** What {@link folderChain} found above a file. */
export interface FolderChain {
  /** The nearest part of the file's folder path that exists (or the root, when none does). */
  readonly nearest: string
  /** What `nearest` is; undefined when nothing exists there. */
  readonly stats: Stats | undefined
  /** The folders below `nearest` that do not exist, outermost first: the ones to create. */
  readonly missing: readonly string[]
}

/**
 * What is at `path`, or undefined when nothing is (or a file stands where a folder of it goes);
 * any other failure (permission denied) is thrown.
 */
export function statOf(path: string): Stats | undefined {
  try {
    return statSync(path)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined
    throw error
  }
}

/**
 * What is at `path`, or undefined when nothing is there or it cannot be looked at (as
 * `existsSync` reads it): for checks that leave such a path for the real open to report.
 */
export function visibleStatOf(path: string): Stats | undefined {
  try {
    return statSync(path)
  } catch {
    return undefined
  }
}

/**
 * Walks up from the folder of `filename` to the nearest part that exists. `stat` says what is at
 * a path (undefined: nothing); by default {@link statOf}, which throws what it cannot look at.
 *
 * @example
 * ```ts
 * const { nearest, stats } = folderChain('./data/app.db')
 * if (stats !== undefined && !stats.isDirectory()) console.log(`${nearest} is not a folder`)
 * ```
 */
export function folderChain(
  filename: string,
  stat: (path: string) => Stats | undefined = statOf,
): FolderChain {
  const missing: string[] = []
  let part = dirname(filename)
  let stats = stat(part)
  while (stats === undefined && dirname(part) !== part) {
    missing.push(part)
    part = dirname(part)
    stats = stat(part)
  }
  return { nearest: part, stats, missing: missing.reverse() }
}
