// Every command that takes `--db` reads BREAKWATER_DB_URL when `--db` is not given (a URL with
// a password belongs in the environment, not in argv, where ps and shell history show it),
// with the relay's precedence and messages; and a malformed URL is answered with the forms
// the CLI accepts, which do not include an in-memory database.
import { EventEmitter } from 'node:events'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { migrateOutbox } from '../../src/outbox/index.js'
import { migrateSagas } from '../../src/saga/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { createTestSqlite, type TestSqlite } from '../support/sqlite.js'
import { type CapturedEntry, runCaptured } from './captured.js'

type Env = Readonly<Record<string, string | undefined>>

const quiet = { stdout: { write: () => {} }, signals: new EventEmitter() }

/** The commands that take `--db`, each with the arguments of a read-only run, given `env`. */
function commands(
  env: Env,
): ReadonlyArray<{ name: string; label?: string; entry: CapturedEntry; args: string[] }> {
  return [
    {
      name: 'outbox',
      entry: (args, deps) => outboxCommand(args, { ...deps, env }),
      args: ['stats'],
    },
    { name: 'saga', entry: (args, deps) => sagaCommand(args, { ...deps, env }), args: ['list'] },
    {
      name: 'migrate',
      entry: (args, deps) => migrateCommand(args, { capabilities: {}, ...deps, env }),
      args: [],
    },
    {
      name: 'relay',
      entry: (args, deps) => relayCommand(args, { ...quiet, ...deps, env }),
      args: [],
    },
    {
      name: 'saga worker',
      entry: (args, deps) => sagaWorkerCommand(args, { ...quiet, ...deps, env }),
      args: ['--module', 'x.js'],
    }, // `breakwater saga worker` as main.ts runs it: through `saga`, which passes env on.
    {
      name: 'saga worker',
      label: 'saga worker (through saga)',
      entry: (args, deps) => sagaCommand(args, { ...deps, env }),
      args: ['worker', '--module', 'x.js'],
    },
  ]
}

// The default database is ./.breakwater/breakwater.db: the tests run in an empty folder, so
// that a command that ignored the environment would show it without touching the repository.
let cwd: string
let folder: string
let file: TestSqlite

beforeAll(async () => {
  cwd = process.cwd()
  folder = mkdtempSync(join(tmpdir(), 'breakwater-cli-env-'))
  process.chdir(folder)
  file = createTestSqlite('env')
  const db = await openDatabase(file.url)
  try {
    await migrateOutbox(db)
    await migrateSagas(db)
  } finally {
    await db.close()
  }
})

afterAll(() => {
  process.chdir(cwd)
  rmSync(folder, { recursive: true, force: true })
  file.cleanup()
})

const labels = (list: ReturnType<typeof commands>) => list.map((c) => c.label ?? c.name)

/** The command `label` names (its name, unless two run the same command). */
function pick<C extends { name: string; label?: string }>(list: readonly C[], label: string): C {
  return list.find((c) => (c.label ?? c.name) === label)!
}

const oneOff = (env: Env) => commands(env).filter((c) => !['relay', 'saga worker'].includes(c.name))

describe('BREAKWATER_DB_URL stands in for --db', () => {
  it.each(labels(oneOff({})))('%s uses it when --db is not given', async (label) => {
    const command = pick(oneOff({ BREAKWATER_DB_URL: file.url }), label)
    const result = await runCaptured(command.entry, command.args)
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(existsSync(join(folder, '.breakwater'))).toBe(false)
  })

  it.each(labels(oneOff({})))('%s: --db wins over it', async (label) => {
    const command = pick(oneOff({ BREAKWATER_DB_URL: 'mysql://db/app' }), label)
    const result = await runCaptured(command.entry, [...command.args, '--db', file.url])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
  })

  it.each(labels(commands({})))(
    '%s: a malformed one is a bad argument naming it, its password hidden',
    async (label) => {
      const env = { BREAKWATER_DB_URL: 'mysql://app:hunter2-pw@db/app' }
      const command = pick(commands(env), label)
      const { name } = command
      const result = await runCaptured(command.entry, command.args)
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(
        `breakwater ${name}: BREAKWATER_DB_URL: expected sqlite:<file> or postgres://`,
      )
      expect(result.stderr).toContain('mysql://app:***@db/app')
      expect(result.stderr).not.toContain('hunter2')
    },
  )

  it.each(labels(commands({})))('%s: an in-memory one is refused naming it', async (label) => {
    const command = pick(commands({ BREAKWATER_DB_URL: 'sqlite::memory:' }), label)
    const { name } = command
    const result = await runCaptured(command.entry, command.args)
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(`breakwater ${name}: BREAKWATER_DB_URL: an in-memory`)
  })

  it.each(labels(commands({})))('%s --help names it', async (label) => {
    const command = pick(commands({}), label)
    const result = await runCaptured(command.entry, [...command.args, '--help'])
    expect(result.code).toBe(0)
    expect(result.stdout).toContain('BREAKWATER_DB_URL')
  })
})

describe('a malformed --db', () => {
  it.each(labels(commands({})))('%s lists only the URLs the CLI accepts', async (label) => {
    const command = pick(commands({}), label)
    const { name } = command
    for (const [bad, expected] of [
      ['mysql://app:hunter2-pw@db/app', 'sqlite:<file> or postgres://'],
      ['sqlite:', 'sqlite:<file> or postgres://'],
      // A postgres:// URL that does not parse is told as such.
      ['postgres://app:hunter2-pw@[db/app', 'a valid postgres:// URL'],
      // So is a sqlite: URL with a bad percent-escape: the list of forms would not say why.
      ['sqlite:./100%.db', 'a sqlite: URL whose percent-escapes are valid'],
      ['sqlite:./app.db\r', 'a sqlite: URL without raw control characters'],
      // And a query parameter pg would ignore (no TLS at all for this one).
      ['postgres://app:hunter2-pw@db/app?ssl_mode=require', 'a postgres:// URL whose query'],
    ]) {
      const result = await runCaptured(command.entry, [...command.args, '--db', bad!])
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(`breakwater ${name}: --db: expected ${expected}`)
      // An in-memory database is refused by every command: the message must not offer it.
      expect(result.stderr).not.toContain(':memory:')
      expect(result.stderr).not.toContain('hunter2')
    }
  })

  // The admin and long-running commands mask secrets in the whole message once more: the form
  // of a postgres:// URL that the message shows must not come out as `user:***@host`, which
  // reads as a URL whose password was hidden, or as `***` being part of the form.
  it.each(labels(commands({})))('%s shows the URL forms it expects unmasked', async (label) => {
    const command = pick(commands({}), label)
    for (const bad of ['mysql://db/app', 'postgres://app@[db/app']) {
      const result = await runCaptured(command.entry, [...command.args, '--db', bad])
      expect(result.code).toBe(2)
      const expected = /expected (.*), got /.exec(result.stderr)?.[1]
      expect(expected).toContain('postgres://<user>:<password>@<host>')
      expect(expected).not.toContain('***')
    }
  })

  it.each(labels(commands({})))(
    '%s refuses every spelling of an in-memory database',
    async (label) => {
      const command = pick(commands({}), label)
      const { name } = command
      // `sqlite://:memory:` names the same in-memory database (the `//` is dropped).
      for (const memory of [
        'sqlite::memory:',
        'SQLITE::memory:',
        'sqlite://:memory:',
        'sqlite:%3Amemory%3A',
      ]) {
        const result = await runCaptured(command.entry, [...command.args, '--db', memory])
        expect(result.code).toBe(2)
        expect(result.stderr).toContain(`breakwater ${name}: --db: an in-memory`)
      }
    },
  )
})

describe('a percent-encoded sqlite: file name', () => {
  it.each(labels(oneOff({})))('%s opens the decoded file', async (label) => {
    const spaced = createTestSqlite('env spaced')
    try {
      const named = join(spaced.filename, '..', 'my db.sqlite')
      const db = await openDatabase(`sqlite:${named}`)
      try {
        await migrateOutbox(db)
        await migrateSagas(db)
      } finally {
        await db.close()
      }
      const command = pick(oneOff({}), label)
      const url = `sqlite:${named.replaceAll(' ', '%20')}`
      const result = await runCaptured(command.entry, [...command.args, '--db', url])
      expect(result.stderr).toBe('')
      expect(result.code).toBe(0)
    } finally {
      spaced.cleanup()
    }
  })
})

// No shell expands a `~` after `sqlite:` (bash only does after `=` or at a word's start), and
// none reads an environment file: `sqlite:~/app.db` named ./~/app.db, which `migrate` created
// (a folder named `~` in the working directory, one `rm -rf ~` away from the home folder), and
// which the hint of every other command told the operator to create.
describe('a sqlite: path starting with ~', () => {
  it.each(labels(commands({})))('%s refuses it as --db, creating nothing', async (label) => {
    const command = pick(commands({}), label)
    const { name } = command
    for (const bad of ['sqlite:~/app.db', 'sqlite://~/app.db', 'sqlite:~']) {
      const result = await runCaptured(command.entry, [...command.args, '--db', bad])
      expect(result.code).toBe(2)
      expect(result.stderr).toContain(`breakwater ${name}: --db: expected a sqlite: path`)
      expect(result.stderr).toContain('~ is not expanded')
      expect(existsSync(join(folder, '~'))).toBe(false)
    }
  })

  it.each(labels(commands({})))('%s refuses it in BREAKWATER_DB_URL', async (label) => {
    const command = pick(commands({ BREAKWATER_DB_URL: 'sqlite:~/app.db' }), label)
    const result = await runCaptured(command.entry, command.args)
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(
      `breakwater ${command.name}: BREAKWATER_DB_URL: expected a sqlite: path`,
    )
    expect(existsSync(join(folder, '~'))).toBe(false)
  })

  it('the relay refuses it as --broker', async () => {
    const command = pick(commands({}), 'relay')
    const result = await runCaptured(command.entry, ['--broker', 'sqlite:~/queue.db'])
    expect(result.code).toBe(2)
    expect(result.stderr).toContain('breakwater relay: --broker: expected a sqlite: path')
    expect(existsSync(join(folder, '~'))).toBe(false)
  })

  it.each(labels(oneOff({})))('%s takes a file in a folder named ~ written ./~', async (label) => {
    const command = pick(oneOff({}), label)
    const result = await runCaptured(command.entry, [...command.args, '--db', 'sqlite:./~/app.db'])
    // Not refused as a URL: the file is not there (migrate, which creates it, is not run here
    // with that URL, so nothing named ~ is left behind).
    expect(result.stderr).not.toContain('~ is not expanded')
  })
})
