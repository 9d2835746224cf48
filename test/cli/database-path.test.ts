// A sqlite: URL whose path cannot be a database file (a folder given as the file, a file where a
// folder of the path goes) is a bad argument: every command that takes --db exits 2 naming the
// path, as `breakwater migrate` does (the SQLite driver refuses it with INVALID_OPTION). The
// admin commands, the relay and the saga worker checked the path themselves and answered 1, as
// for a database that failed, or said "no such database file" with a hint to run migrate, which
// refuses the same path.
import { EventEmitter } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { migrateOutbox, outboxMigrations } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { type CapturedEntry, runCaptured } from './captured.js'
import { runRelay } from './relay-support.js'

let dir: string
let folder: string
let file: string

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'breakwater-cli-path-'))
  folder = join(dir, 'somefolder')
  mkdirSync(folder)
  file = join(dir, 'afile')
  writeFileSync(file, 'not a folder')
})

afterEach(() => {
  rmSync(dir, { recursive: true, force: true })
})

const migrate: CapturedEntry = (args, deps) =>
  migrateCommand(args, { capabilities: { outbox: outboxMigrations }, ...deps })

// The module is loaded before the database is opened: a stand-in that exports `sagas` gets the
// worker that far (its definitions are checked only once the database is open).
function sagaWorker(moduleDir: string): CapturedEntry {
  const module = join(moduleDir, 'sagas.mjs')
  writeFileSync(module, 'export const sagas = [{}]\n')
  return (args, deps) =>
    sagaWorkerCommand(['--module', module, ...args], {
      ...deps,
      env: {},
      signals: new EventEmitter(),
    })
}

const relay: CapturedEntry = (args, deps) =>
  relayCommand(['--broker', 'sql:', ...args], { ...deps, env: {}, signals: new EventEmitter() })

const commands: ReadonlyArray<readonly [string, () => CapturedEntry, readonly string[]]> = [
  ['migrate', () => migrate, []],
  ['outbox', () => outboxCommand, ['stats']],
  ['saga', () => sagaCommand, ['list']],
  ['relay', () => relay, []],
  ['saga worker', () => sagaWorker(dir), []],
]

describe('a sqlite: URL that names a folder', () => {
  it.each(commands)(
    'breakwater %s exits 2 naming it, nothing created',
    async (name, entry, args) => {
      const result = await runCaptured(entry(), [...args, '--db', `sqlite:${folder}`])
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(
        `breakwater ${name}: --db: filename: expected a file, not a folder, got ${JSON.stringify(folder)}`,
      )
      expect(result.stderr).not.toContain('cannot open')
      expect(readdirSync(folder)).toEqual([])
    },
  )
})

describe('a sqlite: URL with a file where a folder of its path goes', () => {
  it.each(commands)('breakwater %s exits 2 naming the file', async (name, entry, args) => {
    const result = await runCaptured(entry(), [...args, '--db', `sqlite:${file}/x.db`])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(
      `breakwater ${name}: --db: filename: expected a path whose folders are folders (${file} is a file)`,
    )
    // migrate refuses the same path: a hint to run it would lead nowhere.
    expect(result.stderr).not.toContain('no such database file')
  })
})

// A path ending in a separator (or in `.` or `..`) names a folder even when there is none:
// migrate refuses it so, yet the other commands said "no such database file (run `breakwater
// migrate --db sqlite:./new/` first, which creates it)", a hint that led to that refusal.
describe('a sqlite: URL ending in a separator, for a folder that does not exist', () => {
  it.each(commands)(
    'breakwater %s exits 2 naming it, nothing created',
    async (name, entry, args) => {
      const missing = `${join(dir, 'new')}/`
      const result = await runCaptured(entry(), [...args, '--db', `sqlite:${missing}`])
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(
        `breakwater ${name}: --db: filename: expected a file, not a folder, got ${JSON.stringify(missing)}`,
      )
      expect(result.stderr).not.toContain('no such database file')
      expect(existsSync(join(dir, 'new'))).toBe(false)
    },
  )
})

describe('breakwater relay: a SQL-queue --broker that names a folder', () => {
  it('exits 2 naming the --broker', async () => {
    const outbox = join(dir, 'outbox.db')
    const db = await openDatabase(`sqlite:${outbox}`)
    await migrateOutbox(db)
    await db.close()
    const result = await runRelay(['--db', `sqlite:${outbox}`, '--broker', `sqlite:${folder}`])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(
      `breakwater relay: --broker: filename: expected a file, not a folder, got ${JSON.stringify(folder)}`,
    )
    expect(readdirSync(folder)).toEqual([])
  })
})

describe('a folder given as BREAKWATER_DB_URL', () => {
  it('is named as that variable, not as a --db that was never given', async () => {
    let stderr = ''
    const code = await outboxCommand(['stats'], {
      stdout: { write: () => {} },
      stderr: { write: (text: string) => (stderr += text) },
      env: { BREAKWATER_DB_URL: `sqlite:${folder}` },
    })
    expect(code).toBe(2)
    expect(stderr).toContain('breakwater outbox: BREAKWATER_DB_URL: filename: expected a file')
  })
})
