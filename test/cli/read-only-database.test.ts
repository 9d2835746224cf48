// A SQLite file this user may read but not write: `breakwater saga worker` started on it, said
// "saga worker started", then logged SQLite's "attempt to write a readonly database" at every
// poll and ran on for ever, claiming nothing (its /healthz green); `breakwater relay` failed
// with that bare SQLite message, naming no file. Both write to their database: they now refuse
// to start, naming the file, and exit 1. Run as a real process under another user when the
// tests run as root (root writes any file whatever its mode). Found by exploratory testing.
import { spawnSync } from 'node:child_process'
import { chmodSync } from 'node:fs'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { cliNodeArgs, runCli } from '../process/cli-process.js'
import { createTestSqlite } from '../support/sqlite.js'

const mainFile = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url))
const module = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))
// Root writes a file whatever its mode: the command then runs as nobody.
const asOtherUser = process.getuid?.() === 0 ? { uid: 65_534, gid: 65_534 } : {}

const cleanups: Array<() => unknown> = []
afterEach(() => {
  for (const fn of cleanups.splice(0).reverse()) fn()
})

/** A migrated SQLite file, made read-only, in a folder anyone may write (for its -shm). */
async function readOnlyDatabase(name: string): Promise<{ url: string; filename: string }> {
  const file = createTestSqlite(name)
  cleanups.push(() => file.cleanup())
  const migrated = await runCli(['migrate', '--db', file.url])
  expect(migrated.code, migrated.stderr).toBe(0)
  chmodSync(file.filename, 0o444)
  chmodSync(dirname(file.filename), 0o777)
  return { url: file.url, filename: file.filename }
}

/** Runs `node ...nodeArgs` to its end (killed after 20 s: a process that ran on). */
function run(nodeArgs: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, nodeArgs, {
    ...asOtherUser,
    encoding: 'utf8',
    timeout: 20_000,
    killSignal: 'SIGKILL',
  })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

describe('a long-running command on a SQLite file it may not write', () => {
  it('saga worker: refuses to start, naming the file, exit 1', async () => {
    const { url, filename } = await readOnlyDatabase('worker-read-only')
    const result = run([
      '--import',
      'tsx',
      mainFile,
      'saga',
      'worker',
      '--module',
      module,
      '--db',
      url,
      '--poll-interval-ms',
      '10',
    ])
    expect(result.status, result.stdout + result.stderr).toBe(1)
    expect(result.stderr).toBe(
      `breakwater saga worker: cannot open ${url}: ${filename} is not writable by this user (EACCES), and the saga worker writes to it\n`,
    )
    expect(result.stdout).not.toContain('saga worker started')
  })

  it('relay: refuses to start, naming the file, exit 1', async () => {
    const { url, filename } = await readOnlyDatabase('relay-read-only')
    const result = run([...cliNodeArgs(), 'relay', '--db', url])
    expect(result.status, result.stdout + result.stderr).toBe(1)
    expect(result.stderr).toBe(
      `breakwater relay: cannot open ${url}: ${filename} is not writable by this user (EACCES), and the relay writes to it\n`,
    )
  })
})
