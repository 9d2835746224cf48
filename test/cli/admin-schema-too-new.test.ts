// The admin commands (`breakwater outbox ...`, `breakwater saga ...`) on a database whose schema a
// newer breakwater migrated: found by exploratory testing, they ran (prune deleted, redrive
// updated) where `migrate`, `relay` and `saga worker` refuse with SCHEMA_TOO_NEW. An older
// process never runs on a schema it was not written for (docs/architecture.md): each refuses,
// the reading ones too (they would read rows by rules that may have changed), exit 1, nothing
// changed.
import { afterEach, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { sagaCommand } from '../../src/cli/saga.js'
import {
  inboxMigrations,
  migrateInbox,
  migrateOutbox,
  outboxMigrations,
  outboxTable,
} from '../../src/outbox/index.js'
import { migrateSagas, sagaMigrations, startSaga } from '../../src/saga/index.js'
import { listAppliedMigrations, type Migration, openDatabase } from '../../src/stores/index.js'
import { count } from '../outbox/support.js'
import { createTestSqlite } from '../support/sqlite.js'
import { runCaptured } from './captured.js'
import { hanging } from './fixtures/hanging-sagas.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

/** A migrated database where `capability` is recorded one version past what this code knows. */
async function newerDatabase(capability: string, migrations: readonly Migration[]) {
  const file = createTestSqlite(`admin-newer-${capability}`)
  cleanups.push(() => file.cleanup())
  const db = await openDatabase(file.url)
  cleanups.push(() => db.close())
  await migrateOutbox(db)
  await migrateInbox(db)
  await migrateSagas(db)
  // A published event old enough for prune, and a dead one for redrive.
  await db.execute(
    `INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id, event_type, topic, payload, headers, created_at, partition_no, published_at) VALUES ('e1', 'o', 'a', 't', 'x', '{}', '{}', 0, 0, 1)`,
  )
  await db.execute(
    `INSERT INTO ${outboxTable} (event_id, aggregate_type, aggregate_id, event_type, topic, payload, headers, created_at, partition_no, dead_at, attempts) VALUES ('e2', 'o', 'b', 't', 'x', '{}', '{}', 0, 0, 1, 5)`,
  )
  const { id } = await startSaga(db, hanging, {})
  const known = Math.max(...migrations.map((m) => m.version))
  await db.execute(
    'INSERT INTO breakwater_migrations (capability, version, name, applied_at) VALUES ($1, $2, $3, $4)',
    [capability, known + 1, 'from-a-newer-release', 0],
  )
  return { url: file.url, db, sagaId: id, known }
}

interface Case {
  readonly capability: string
  readonly migrations: readonly Migration[]
  readonly entry: typeof outboxCommand
  /** The command's words, for the test's name. */
  readonly command: string
  readonly args: (sagaId: string) => string[]
}

const outbox = { migrations: outboxMigrations, entry: outboxCommand }
const saga = { migrations: sagaMigrations, entry: sagaCommand }
const prune = ['prune', '--older-than', '1ms']
const cases: readonly Case[] = [
  { capability: 'outbox', ...outbox, command: 'outbox prune', args: () => prune },
  {
    capability: 'inbox',
    migrations: inboxMigrations,
    entry: outboxCommand,
    command: 'outbox prune',
    args: () => prune,
  },
  { capability: 'outbox', ...outbox, command: 'outbox redrive', args: () => ['redrive', '--all'] },
  { capability: 'outbox', ...outbox, command: 'outbox dead', args: () => ['dead'] },
  { capability: 'outbox', ...outbox, command: 'outbox stats', args: () => ['stats'] },
  {
    capability: 'saga',
    ...saga,
    command: 'saga prune',
    // A window under 1h is refused for sagas unless meant (it frees ids of recent starts).
    args: () => [...prune, '--allow-short-window'],
  },
  { capability: 'saga', ...saga, command: 'saga cancel', args: (id) => ['cancel', id] },
  { capability: 'saga', ...saga, command: 'saga retry', args: (id) => ['retry', id] },
  { capability: 'saga', ...saga, command: 'saga list', args: () => ['list'] },
  { capability: 'saga', ...saga, command: 'saga show', args: (id) => ['show', id] },
]

describe('admin commands on a schema a newer breakwater migrated', () => {
  it.each(cases)(
    '$capability newer: $command is refused with SCHEMA_TOO_NEW, nothing changed',
    async ({ capability, migrations, entry, args }) => {
      const { url, db, sagaId, known } = await newerDatabase(capability, migrations)
      const before = {
        migrations: await listAppliedMigrations(db),
        published: await count(db, outboxTable, 'WHERE published_at IS NOT NULL'),
        dead: await count(db, outboxTable, 'WHERE dead_at IS NOT NULL'),
        sagas: await db.query('SELECT * FROM breakwater_sagas'),
      }
      const result = await runCaptured(entry, [...args(sagaId), '--db', url])
      expect(result.code, result.stderr).toBe(1)
      expect(result.stderr).toContain(
        `The database's ${capability} schema is at version ${known + 1}, but this breakwater knows ${capability} migrations only up to version ${known}`,
      )
      expect(result.stderr).toContain('(SCHEMA_TOO_NEW)')
      expect(result.stdout).toBe('')
      expect({
        migrations: await listAppliedMigrations(db),
        published: await count(db, outboxTable, 'WHERE published_at IS NOT NULL'),
        dead: await count(db, outboxTable, 'WHERE dead_at IS NOT NULL'),
        sagas: await db.query('SELECT * FROM breakwater_sagas'),
      }).toEqual(before)
    },
  )

  it('a capability the command does not use being newer does not stop it', async () => {
    const { url } = await newerDatabase('cqrs', [{ version: 0 } as Migration])
    const result = await runCaptured(outboxCommand, ['stats', '--db', url])
    expect(result.code, result.stderr).toBe(0)
  })
})
