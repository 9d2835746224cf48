// The admin commands (outbox, saga) answer bad arguments with exit 2 and a message that never
// shows a password, whatever the argument was: a URL given without --db is a common slip.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { proxyCommand } from '../../src/cli/proxy.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { createOutbox, migrateOutbox, outboxTable } from '../../src/outbox/index.js'
import { openDatabase } from '../../src/stores/index.js'
import { createTestSqlite } from '../support/sqlite.js'
import { type CapturedEntry, runCaptured } from './captured.js'

const url = 'postgres://app:hunter2-pw@db/app'

describe('admin commands: a password in a bad argument', () => {
  const cases: ReadonlyArray<{ name: string; entry: CapturedEntry; args: string[] }> = [
    { name: 'saga', entry: sagaCommand, args: ['list', url] },
    { name: 'saga', entry: sagaCommand, args: ['prune', url] },
    { name: 'saga', entry: sagaCommand, args: [url] },
    { name: 'saga', entry: sagaCommand, args: ['list', '--status', url] },
    { name: 'outbox', entry: outboxCommand, args: ['stats', url] },
    { name: 'outbox', entry: outboxCommand, args: [url] },
    { name: 'outbox', entry: outboxCommand, args: ['dead', '--limit', url] },
  ]
  it.each(cases)('$name $args exits 2 without printing it', async ({ name, entry, args }) => {
    const result = await runCaptured(entry, args)
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(`breakwater ${name}: `)
    expect(result.stderr).toContain('postgres://app:***@db/app')
    expect(result.stderr).not.toContain('hunter2')
    expect(result.stdout).toBe('')
  })
})

describe('long-running commands: a password in a bad argument', () => {
  const quiet = { stdout: { write: () => {} }, signals: new EventEmitter(), env: {} }
  const relay: CapturedEntry = (args, deps) => relayCommand(args, { ...quiet, ...deps })
  const worker: CapturedEntry = (args, deps) => sagaWorkerCommand(args, { ...quiet, ...deps })
  const proxy: CapturedEntry = (args, deps) => proxyCommand(args, { ...quiet, ...deps })
  const cases: ReadonlyArray<{ name: string; entry: CapturedEntry; args: string[] }> = [
    { name: 'relay', entry: relay, args: ['--webhook-secret-env', url] },
    { name: 'saga worker', entry: worker, args: ['--module', 'x.js', '--log-level', url] },
    // The proxy takes no URL: one given by mistake is quoted in the message all the same.
    { name: 'proxy', entry: proxy, args: ['--config', 'p.yaml', url] },
    { name: 'proxy', entry: proxy, args: [`--db=${url}`] },
    { name: 'proxy', entry: proxy, args: ['--config', 'p.yaml', '--workers', url] },
    { name: 'proxy', entry: proxy, args: ['--config', 'p.yaml', '--log-level', url] },
  ]
  it.each(cases)('$name $args exits 2 without printing it', async ({ name, entry, args }) => {
    const result = await runCaptured(entry, args)
    expect(result.code).toBe(2)
    expect(result.stderr).toContain(`breakwater ${name}: `)
    expect(result.stderr).not.toContain('hunter2')
  })
})

describe('breakwater migrate: a password in a bad argument', () => {
  const migrate: CapturedEntry = (args, deps) => migrateCommand(args, { capabilities: {}, ...deps })
  it.each([[[`--dbx=${url}`]], [[url]], [['--db=sqlite:./x.db', `--url=${url}`]]])(
    'migrate %j exits 2 without printing it',
    async (args) => {
      const result = await runCaptured(migrate, args)
      expect(result.code).toBe(2)
      expect(result.stderr).toContain('breakwater migrate: unknown argument')
      expect(result.stderr).not.toContain('hunter2')
    },
  )
})

describe('admin commands: a command named like an Object member', () => {
  // `name in table` finds Object.prototype's members: such a word went on as a command (a
  // TypeError stack, or a database opened and nothing done with exit code 0).
  const cases: ReadonlyArray<{ name: string; entry: CapturedEntry; args: string[] }> = [
    { name: 'outbox', entry: outboxCommand, args: ['constructor'] },
    { name: 'outbox', entry: outboxCommand, args: ['toString', '--db', 'sqlite:./x.db'] },
    { name: 'saga', entry: sagaCommand, args: ['constructor', 'some-id'] },
    { name: 'saga', entry: sagaCommand, args: ['__proto__', 'some-id', '--json'] },
  ]
  it.each(cases)('$name $args is an unknown command, exit 2', async ({ name, entry, args }) => {
    const result = await runCaptured(entry, args)
    expect(result.stderr).toContain(`breakwater ${name}: unknown command "${args[0]}"`)
    expect(result.code).toBe(2)
  })
})

describe('admin commands: an option before the command', () => {
  // `breakwater saga --db <url> list` was answered 'unknown command "--db"', as if a command of
  // that name had been mistyped: the option goes after the command, and the message says so.
  // outbox answered the same until it shared saga's check.
  const saga = 'breakwater saga list|show|retry|cancel|prune|worker [options]'
  const outbox = 'breakwater outbox dead|redrive|stats|prune [options]'
  const cases: ReadonlyArray<{
    name: string
    entry: CapturedEntry
    args: string[]
    option: string
    form: string
  }> = [
    {
      name: 'saga',
      entry: sagaCommand,
      args: ['--db', 'sqlite:./x.db', 'list'],
      option: '--db',
      form: saga,
    },
    { name: 'saga', entry: sagaCommand, args: [`--db=${url}`, 'list'], option: '--db', form: saga },
    {
      name: 'saga',
      entry: sagaCommand,
      args: ['--json', 'show', 'some-id'],
      option: '--json',
      form: saga,
    },
    {
      name: 'outbox',
      entry: outboxCommand,
      args: ['--db', 'sqlite:./x.db', 'stats'],
      option: '--db',
      form: outbox,
    },
    {
      name: 'outbox',
      entry: outboxCommand,
      args: [`--db=${url}`, 'dead'],
      option: '--db',
      form: outbox,
    },
    {
      name: 'outbox',
      entry: outboxCommand,
      args: ['--json', 'stats'],
      option: '--json',
      form: outbox,
    },
  ]
  it.each(cases)(
    '$name $args names the option and where the command goes, exit 2',
    async ({ name, entry, args, option, form }) => {
      const result = await runCaptured(entry, args)
      expect(result.code).toBe(2)
      expect(result.stderr.split('\n')[0]).toBe(
        `breakwater ${name}: the command comes before its options (${form}), got the option "${option}" first`,
      )
      expect(result.stderr).not.toContain('hunter2')
    },
  )
})

describe('breakwater outbox dead --json: a password in a stored error', () => {
  it('is masked as in the table', async () => {
    const file = createTestSqlite('outbox-dead-json')
    const db = await openDatabase(file.url)
    try {
      await migrateOutbox(db)
      await db.transaction((tx) =>
        createOutbox().enqueue(tx, {
          aggregateType: 'order',
          aggregateId: 'o-1',
          type: 'order.placed',
          payload: {},
        }),
      )
      // Dead-lettered as a relay does it, with the error text a broker client gave.
      await db.execute(`UPDATE ${outboxTable} SET dead_at = $1, attempts = 1, last_error = $2`, [
        Date.now(),
        `connect to amqp://relay:${'hunter2'}-pw@mq:5672 refused`,
      ])
      for (const flags of [[], ['--json']]) {
        const result = await runCaptured(outboxCommand, ['dead', ...flags, '--db', file.url])
        expect(result.code).toBe(0)
        expect(result.stdout).toContain('amqp://relay:***@mq:5672')
        expect(result.stdout).not.toContain('hunter2')
      }
    } finally {
      await db.close()
      file.cleanup()
    }
  })
})

describe('an in-memory --db is a bad argument (exit 2) for every command', () => {
  // It would be empty and gone when the command ends: refused before anything opens, as
  // migrate refuses it, naming where the URL came from.
  const quiet = { stdout: { write: () => {} }, signals: new EventEmitter(), env: {} }
  const relay: CapturedEntry = (args, deps) => relayCommand(args, { ...quiet, ...deps })
  const relayFromEnv: CapturedEntry = (args, deps) =>
    relayCommand(args, { ...quiet, env: { BREAKWATER_DB_URL: 'sqlite::memory:' }, ...deps })
  const worker: CapturedEntry = (args, deps) => sagaWorkerCommand(args, { ...quiet, ...deps })
  const cases: ReadonlyArray<{ name: string; entry: CapturedEntry; args: string[]; says: string }> =
    [
      { name: 'outbox', entry: outboxCommand, args: ['stats'], says: '--db: an in-memory' },
      { name: 'saga', entry: sagaCommand, args: ['list'], says: '--db: an in-memory' },
      { name: 'relay', entry: relay, args: [], says: '--db: an in-memory' },
      { name: 'relay', entry: relayFromEnv, args: [], says: 'BREAKWATER_DB_URL: an in-memory' },
      {
        name: 'relay',
        entry: relay,
        args: ['--db', 'sqlite:./x.db', '--broker', 'sqlite::memory:'],
        says: '--broker: an in-memory',
      },
      {
        name: 'saga worker',
        entry: worker,
        args: ['--module', 'x.js'],
        says: '--db: an in-memory',
      },
    ]
  it.each(cases)('$name $args', async ({ name, entry, args, says }) => {
    const withDb =
      args.includes('--db') || entry === relayFromEnv ? args : [...args, '--db', 'sqlite::memory:']
    const result = await runCaptured(entry, withDb)
    expect(result.stderr).toContain(`breakwater ${name}: ${says}`)
    expect(result.code).toBe(2)
  })
})

describe('a database URL that cannot be opened is quoted the same by every command', () => {
  // Nothing listens on port 1: the connect is refused at once, and the message quotes the URL.
  // Every command masked it with redactSecrets but migrate, which used the stores' redactUrl:
  // `postgres://app@127.0.0.1:1/db` there, `postgres://***@127.0.0.1:1/db` elsewhere (a user
  // name alone is masked whole: it may be a token, as NATS and Redis take one). And
  // redactSecrets reads text, so a password holding a line break (`pw\r`) was printed as it
  // was by saga, outbox and relay, the \r sending the rest over the line's start.
  const quiet = { stdout: { write: () => {} }, signals: new EventEmitter(), env: {} }
  const commands: ReadonlyArray<[string, CapturedEntry, string[]]> = [
    ['migrate', (args, deps) => migrateCommand(args, { capabilities: {}, ...deps, env: {} }), []],
    ['saga', (args, deps) => sagaCommand(args, { ...deps, env: {} }), ['list']],
    ['outbox', (args, deps) => outboxCommand(args, { ...deps, env: {} }), ['stats']],
    ['relay', (args, deps) => relayCommand(args, { ...quiet, ...deps }), []],
  ]
  it.each(commands)('breakwater %s', async (name, entry, args) => {
    for (const [given, shown] of [
      ['postgres://app@127.0.0.1:1/db', 'postgres://***@127.0.0.1:1/db'],
      ['postgres://app:hunter2\r@127.0.0.1:1/db', 'postgres://app:***@127.0.0.1:1/db'],
    ] as const) {
      const result = await runCaptured(entry, [...args, '--db', given])
      expect(result.code, result.stderr).toBe(1)
      expect(result.stderr).toContain(`breakwater ${name}: cannot open ${shown}: `)
      expect(result.stderr).not.toContain('hunter2')
      expect(result.stderr).not.toContain('app@')
      expect(result.stderr.replaceAll('\n', '')).not.toMatch(/\p{Cc}/u)
    }
  })
})
