import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** A SQLite database file in its own temporary folder. */
export interface TestSqlite {
  /** `sqlite:/tmp/.../name.db` */
  readonly url: string
  /** The file path. */
  readonly filename: string
  /** Deletes the folder (close the database first). */
  cleanup(): void
}

/** A fresh SQLite file URL for one test (or test file). */
export function createTestSqlite(name = 'test'): TestSqlite {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-sqlite-'))
  const filename = join(dir, `${name.replace(/[^a-zA-Z0-9_-]+/g, '-')}.db`)
  return {
    url: `sqlite:${filename}`,
    filename,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  }
}
