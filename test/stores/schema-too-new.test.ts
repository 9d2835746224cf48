// Every durable capability's migrate function goes through the shared runner, so each refuses a
// database a newer breakwater migrated (SCHEMA_TOO_NEW), naming itself and both versions, and
// changes nothing, on real SQLite and PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cqrsMigrations, migrateCqrs } from '../../src/cqrs/index.js'
import { idempotencyMigrations, migrateIdempotency } from '../../src/idempotency/index.js'
import {
  inboxMigrations,
  migrateInbox,
  migrateOutbox,
  migrateSqlQueue,
  outboxMigrations,
  sqlQueueMigrations,
} from '../../src/outbox/index.js'
import { migrateSagas, sagaMigrations } from '../../src/saga/index.js'
import {
  type AppliedMigration,
  listAppliedMigrations,
  type Migration,
  SchemaTooNewError,
  type SqlDriver,
} from '../../src/stores/index.js'
import { type OpenedTarget, targets } from './drivers.js'

const capabilities: ReadonlyArray<
  readonly [string, readonly Migration[], (db: SqlDriver) => Promise<AppliedMigration[]>]
> = [
  ['idempotency', idempotencyMigrations, migrateIdempotency],
  ['outbox', outboxMigrations, migrateOutbox],
  ['inbox', inboxMigrations, migrateInbox],
  ['queue', sqlQueueMigrations, migrateSqlQueue],
  ['saga', sagaMigrations, migrateSagas],
  ['cqrs', cqrsMigrations, migrateCqrs],
]

describe.each(targets)('$dialect: a schema migrated by a newer breakwater', (target) => {
  let opened: OpenedTarget

  beforeAll(async () => {
    opened = await target.open('schema-too-new')
    for (const [, , migrate] of capabilities) await migrate(opened.db)
  })
  afterAll(async () => {
    await opened?.cleanup()
  })

  it.each(capabilities)(
    '%s refuses to migrate, changing nothing',
    async (name, migrations, migrate) => {
      const { db } = opened
      const known = Math.max(...migrations.map((m) => m.version))
      expect(await migrate(db)).toEqual([])
      await db.execute(
        'INSERT INTO breakwater_migrations (capability, version, name, applied_at) VALUES ($1, $2, $3, $4)',
        [name, known + 1, 'from-a-newer-release', 0],
      )
      const before = await listAppliedMigrations(db)
      const error = await migrate(db).catch((e) => e)
      expect(error).toBeInstanceOf(SchemaTooNewError)
      expect(error).toMatchObject({
        code: 'SCHEMA_TOO_NEW',
        capability: name,
        databaseVersion: known + 1,
        knownVersion: known,
      })
      expect(await listAppliedMigrations(db)).toEqual(before)
    },
  )
})
