// A projection's first run creates its tables. Under a table-only PostgreSQL role (SELECT,
// INSERT, UPDATE, DELETE on every table, no CREATE on the schema) that CREATE TABLE fails: the
// error names the projection, the table being created and what the role lacks, with the
// driver's error (42501) as cause, where it used to be a bare "permission denied for schema
// public". Once a role with CREATE has run the projection (an admin, at deploy), the table-only
// role runs it, given default privileges on the tables the admin creates. Real PostgreSQL, a
// real role, created here and dropped after.
import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  createEventStore,
  createProjector,
  defineProjection,
  migrateCqrs,
  ProjectionSetupError,
} from '../../src/cqrs/index.js'
import { openDatabase, type SqlDriver } from '../../src/stores/index.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'

type NoteEvent = { type: 'noted'; data: { text: string } }

function notes(name: string, table: string) {
  return defineProjection<NoteEvent>({
    name,
    tables: { [table]: (t) => [`CREATE TABLE ${t} (stream TEXT PRIMARY KEY, text TEXT NOT NULL)`] },
    async apply(event, { tx, table: physical }) {
      await tx.execute(`INSERT INTO ${physical(table)} (stream, text) VALUES ($1, $2)`, [
        event.stream,
        event.data.text,
      ])
    },
  })
}

describe('a projection run by a role without CREATE on the schema (PostgreSQL)', () => {
  const role = `bw_tables_only_${randomBytes(4).toString('hex')}`
  const password = randomBytes(12).toString('hex')
  let database: TestDatabase
  let admin: SqlDriver
  let app: SqlDriver

  beforeAll(async () => {
    database = await createTestDatabase('projection_privileges')
    admin = await openDatabase(database.url)
    await migrateCqrs(admin)
    await admin.execute(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`)
    // PostgreSQL before 15 lets every role create in public: take that away, as 15 does.
    await admin.execute('REVOKE CREATE ON SCHEMA public FROM PUBLIC')
    await admin.execute(`GRANT USAGE ON SCHEMA public TO ${role}`)
    await admin.execute(
      `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${role}`,
    )
    await admin.execute(`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${role}`)
    const url = new URL(database.url)
    url.username = role
    url.password = password
    app = await openDatabase(url.toString())
  })
  afterAll(async () => {
    await app?.close()
    await admin?.close()
    await database?.drop()
    // The database (with the role's grants in it) is gone: the role can go too.
    const cleanup = await openDatabase(new URL('/postgres', database.url).toString())
    try {
      await cleanup.execute(`DROP ROLE IF EXISTS ${role}`)
    } finally {
      await cleanup.close()
    }
  })

  function expectNamed(error: unknown, projection: string, table: string): void {
    expect(error).toBeInstanceOf(ProjectionSetupError)
    expect(error).toMatchObject({ code: 'PROJECTION_SETUP_FAILED', projection, table })
    const message = (error as Error).message
    expect(message).toContain(`projection "${projection}"`)
    expect(message).toContain(`table "${table}"`)
    expect(message).toContain('CREATE')
    expect(message).toContain('permission denied for schema public')
    expect(((error as Error).cause as { code?: unknown }).code).toBe('42501')
  }

  it('an inline projection: the append is refused naming the projection and its table', async () => {
    const store = createEventStore(app, {
      inlineProjections: [notes('inline-notes', 'inline_notes')],
    })
    const error = await store
      .append('note-1', [{ type: 'noted', data: { text: 'a' } }])
      .catch((e: unknown) => e)
    expectNamed(error, 'inline-notes', 'inline_notes')
    // Nothing was appended with it.
    expect((await store.readStream('note-1')).events).toEqual([])
    // Inside the caller's own transaction too.
    const inTx = await app
      .transaction((tx) => store.append('note-2', [{ type: 'noted', data: { text: 'b' } }], { tx }))
      .catch((e: unknown) => e)
    expectNamed(inTx, 'inline-notes', 'inline_notes')
  })

  it('an async projection: catchUp is refused naming the projection and its table', async () => {
    const store = createEventStore(app)
    await store.append('note-3', [{ type: 'noted', data: { text: 'c' } }])
    const projector = createProjector(store, notes('async-notes', 'async_notes'))
    const error = await projector.catchUp().catch((e: unknown) => e)
    expectNamed(error, 'async-notes', 'async_notes')
  })

  it('runs under the table-only role once a role with CREATE has run it', async () => {
    // What the docs advise: tables created from now on by the admin are the app role's to write.
    await admin.execute(
      `ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${role}`,
    )
    // Inline: a rebuild by the admin registers it and creates its tables.
    const inline = notes('deployed-inline', 'deployed_inline')
    const adminInline = createEventStore(admin, { inlineProjections: [inline] })
    await createProjector(adminInline, inline).rebuild()
    const store = createEventStore(app, { inlineProjections: [inline] })
    await store.append('note-4', [{ type: 'noted', data: { text: 'd' } }])
    expect(
      await app.query("SELECT stream, text FROM deployed_inline WHERE stream = 'note-4'"),
    ).toEqual([{ stream: 'note-4', text: 'd' }])
    // Async: likewise; the application's projector goes on from the rebuild's checkpoint.
    const async = notes('deployed-async', 'deployed_async')
    await createProjector(createEventStore(admin), async).rebuild()
    await store.append('note-5', [{ type: 'noted', data: { text: 'e' } }])
    await createProjector(createEventStore(app), async).catchUp()
    expect(
      await app.query("SELECT stream, text FROM deployed_async WHERE stream = 'note-5'"),
    ).toEqual([{ stream: 'note-5', text: 'e' }])
  })
})
