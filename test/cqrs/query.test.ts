// The query side's read-only guarantee on real PostgreSQL: the text guard refuses statements
// that look like writes, and every query also runs in a READ ONLY transaction, so a SELECT whose
// effects the text cannot show (nextval, FOR SHARE, a function that writes a table) is refused
// by the server with the same INVALID_OPTION error, and nothing it would have done outlives the
// query. What READ ONLY allows (large objects, pg_notify, SQL given as text) is refused by name.
import { beforeAll, describe, expect, it } from 'vitest'
import { createQueryHandler } from '../../src/cqrs/index.js'
import { InvalidOptionError } from '../../src/index.js'
import { postgresDb, useTestDb } from './databases.js'

/** What `q` rejects `sql` with: InvalidOptionError (INVALID_OPTION) naming the sql. */
async function refusal(
  q: (params: [string, unknown[]?]) => Promise<unknown>,
  sql: string,
): Promise<InvalidOptionError> {
  const error = await q([sql]).catch((e: unknown) => e)
  expect(error, sql).toBeInstanceOf(InvalidOptionError)
  expect((error as InvalidOptionError).code, sql).toBe('INVALID_OPTION')
  expect((error as InvalidOptionError).option, sql).toBe('sql')
  return error as InvalidOptionError
}

describe('query handlers on postgres', () => {
  const t = useTestDb(postgresDb, 'cqrs_query')
  beforeAll(async () => {
    await t.db.execute('CREATE TABLE rm_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)')
    await t.db.execute("INSERT INTO rm_items VALUES (1, 'one'), (2, 'two')")
    await t.db.execute('CREATE SEQUENCE rm_seq')
    await t.db.execute(
      `CREATE FUNCTION rm_sneaky() RETURNS integer LANGUAGE sql AS
       $$ INSERT INTO rm_items VALUES (99, 'sneaked'); SELECT 1 $$`,
    )
  })

  const query = () =>
    createQueryHandler({
      db: t.db,
      run: (rm, [sql, params]: [string, unknown[]?]) => rm.query(sql, params),
    })

  it('the server refuses what a SELECT must not do, with the guard error', async () => {
    const q = query()
    for (const sql of [
      "SELECT nextval('rm_seq')",
      // FOR UPDATE is refused by the text check already (UPDATE); FOR SHARE is not.
      'SELECT * FROM rm_items FOR SHARE',
      'SELECT * FROM rm_items FOR KEY SHARE',
      'SELECT rm_sneaky()',
    ]) {
      const error = await refusal(q, sql)
      expect(error.message).toMatch(/read-only/)
      expect(error.cause, sql).toMatchObject({ code: '25006' })
    }
    // Nothing happened: the row is not there and the sequence never moved.
    expect(await t.db.query('SELECT id FROM rm_items WHERE id = 99')).toEqual([])
    expect(await t.db.query<{ is_called: boolean }>('SELECT is_called FROM rm_seq')).toEqual([
      { is_called: false },
    ])
  })

  it('session-level advisory locks and settings are refused by the guard', async () => {
    // READ ONLY does not refuse these, and they would outlive the query on a pooled connection.
    const q = query()
    for (const sql of [
      'SELECT pg_advisory_lock(42)',
      'SELECT pg_try_advisory_lock_shared(42)',
      "SELECT set_config('search_path', 'nowhere', false)",
    ]) {
      await expect(q([sql]), sql).rejects.toThrow(InvalidOptionError)
    }
    // The transaction-scoped ones end with the query: allowed.
    await expect(q(['SELECT pg_try_advisory_xact_lock(42) AS locked'])).resolves.toEqual([
      { locked: true },
    ])
  })

  it('functions a READ ONLY transaction lets write or run SQL text are refused by name', async () => {
    // Each of these ran (and committed) in the read-only transaction: large objects created,
    // imported from a server file and unlinked, a NOTIFY sent, statistics reset; and
    // query_to_xml read the event log through a string literal the text check does not see.
    const q = query()
    const count = async () =>
      Number(
        (
          await t.db.query<{ c: number | string }>(
            'SELECT count(*) AS c FROM pg_largeobject_metadata',
          )
        )[0]!.c,
      )
    const before = await count()
    for (const sql of [
      'SELECT lo_create(0)',
      'SELECT lo_creat(-1)',
      "SELECT lo_from_bytea(0, 'hello'::bytea)",
      "SELECT lo_import('/etc/passwd')",
      "SELECT lo_export(0, '/tmp/breakwater-lo-export')",
      'SELECT lo_unlink(oid) FROM pg_largeobject_metadata',
      "SELECT lo_put(0, 0, 'x'::bytea)",
      'SELECT lowrite(lo_open(0, 131072), $$x$$)',
      "SELECT pg_notify('breakwater_events', '1')",
      'SELECT pg_stat_reset()',
      "SELECT pg_stat_reset_shared('bgwriter')",
      'SELECT pg_stat_reset_single_table_counters(0)',
      "SELECT * FROM query_to_xml('select * from breakwater_events', true, true, '')",
      "SELECT query_to_xml_and_xmlschema('select 1', true, true, '')",
      "SELECT table_to_xml('breakwater_events', true, true, '')",
      "SELECT schema_to_xml('public', true, true, '')",
      "SELECT database_to_xml(true, true, '')",
      "SELECT * FROM ts_stat('select to_tsvector(data) from breakwater_events')",
      "SELECT * FROM dblink('dbname=x', 'delete from rm_items') AS d(a int)",
      "SELECT dblink_exec('dbname=x', 'delete from rm_items')",
      'SELECT pg_terminate_backend(0)',
      // Schema-qualified, quoted, or spelt with escapes: still the function.
      'SELECT pg_catalog.lo_create(0)',
      'SELECT "lo_create"(0)',
      'SELECT pg_catalog."pg_notify"($1, $2)',
      'SELECT U&"lo\\005fcreate"(0)',
      'SELECT LO_CREATE (0)',
    ]) {
      // Refused by the text check, before the server ran anything.
      expect((await refusal(q, sql)).cause, sql).toBeUndefined()
    }
    expect(await count()).toBe(before)
    // The names in data, or as part of other names, are not calls.
    await expect(q(["SELECT 'lo_create(0)' AS s, 1 AS lo_created"])).resolves.toEqual([
      { s: 'lo_create(0)', lo_created: 1 },
    ])
    // Reading a large object writes nothing: allowed.
    await expect(q(['SELECT count(*)::int AS n FROM pg_largeobject_metadata'])).resolves.toEqual([
      { n: before },
    ])
  })

  it('reads still work, with parameters and many at once, and leave the pool read-write', async () => {
    const q = query()
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        q(['SELECT name FROM rm_items WHERE id = $1', [(i % 2) + 1]]),
      ),
    )
    expect(results.map((rows) => (rows as { name: string }[])[0]!.name)).toEqual(
      Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? 'one' : 'two')),
    )
    // Every pooled connection is back to read-write for the store's own writes.
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        t.db.execute('INSERT INTO rm_items VALUES ($1, $2)', [100 + i, 'w']),
      ),
    )
  })

  it('a query through a savepoint leaves the outer transaction read-write', async () => {
    await t.db.transaction(async (tx) => {
      const q = createQueryHandler({
        db: tx,
        run: (rm) => rm.query('SELECT count(*) FROM rm_items'),
      })
      await q(undefined)
      await expect(q(undefined)).resolves.toHaveLength(1)
      await tx.execute("INSERT INTO rm_items VALUES (200, 'after')")
      await expect(
        createQueryHandler({ db: tx, run: (rm) => rm.query("SELECT nextval('rm_seq')") })(
          undefined,
        ),
      ).rejects.toThrow(/read-only/)
      // The failed query rolled back only its savepoint.
      await tx.execute("INSERT INTO rm_items VALUES (201, 'after')")
    })
    expect(await t.db.query('SELECT id FROM rm_items WHERE id >= 200 ORDER BY id')).toEqual([
      { id: 200 },
      { id: 201 },
    ])
  })
})
