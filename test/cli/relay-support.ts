// Helpers of the `breakwater relay` tests: the command run in-process, a SQLite file migrated by
// the real CLI, and an encrypted copy of a test client key.
import { createPrivateKey } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { expect } from 'vitest'
import { relayCommand } from '../../src/cli/relay.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { runCli } from '../process/cli-process.js'
import type { TestCerts } from '../proxy/support/certs.js'
import { createTestSqlite } from '../support/sqlite.js'

/** What an in-process `breakwater relay` printed, and its exit code. */
export interface RelayRun {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
  /** stdout then stderr. */
  readonly all: string
}

/**
 * Runs `relayCommand(args)` in-process with `env` as its whole environment and signals nobody
 * sends, collecting what it prints: for commands that end by themselves (bad arguments, a
 * failed start).
 */
export async function runRelay(
  args: string[],
  env: Record<string, string> = {},
): Promise<RelayRun> {
  let stdout = ''
  let stderr = ''
  const code = await relayCommand(args, {
    stdout: { write: (t: string) => (stdout += t) },
    stderr: { write: (t: string) => (stderr += t) },
    env,
    signals: new EventEmitter(),
  })
  return { code, stdout, stderr, all: stdout + stderr }
}

/** A fresh SQLite file migrated by `breakwater migrate` (a real process), and a connection to it. */
export interface MigratedSqlite {
  readonly url: string
  readonly db: SqlDriver
  /** What `breakwater migrate` printed. */
  readonly migrateStdout: string
}

/**
 * Creates a test SQLite file named after `name`, migrates it with the CLI (failing the test if
 * that exits non-zero) and opens it; the file's removal and the connection's close are pushed
 * onto `cleanups`, in the order that lets a reversed run close before it removes.
 */
export async function migratedSqlite(
  name: string,
  cleanups: Array<() => unknown>,
): Promise<MigratedSqlite> {
  const file = createTestSqlite(name)
  cleanups.push(() => file.cleanup())
  const migrated = await runCli(['migrate', '--db', file.url])
  expect(migrated.code, migrated.stderr).toBe(0)
  const db = await openDatabase(file.url)
  cleanups.push(() => db.close())
  return { url: file.url, db, migrateStdout: migrated.stdout }
}

/** Writes the test client key encrypted with `passphrase` (PKCS #8, AES-256) and returns its path. */
export function writeEncryptedClientKey(certs: TestCerts, passphrase: string): string {
  const file = join(certs.dir, 'client-key-encrypted.pem')
  const pem = createPrivateKey(certs.client.key).export({
    type: 'pkcs8',
    format: 'pem',
    cipher: 'aes-256-cbc',
    passphrase,
  })
  writeFileSync(file, pem)
  return file
}
