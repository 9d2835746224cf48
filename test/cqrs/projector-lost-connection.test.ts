// A projector whose session the server ends (pg_terminate_backend from a second connection)
// while its batch's transaction is open: the next statement fails with pg's bare "Client has
// encountered a connection error and is not queryable", which names no cause. The server's
// error (57P01, "terminating connection due to administrator command") was only in `cause`, so
// `onError` and the projection-error channel said the connection failed, never why.
import { channel } from 'node:diagnostics_channel'
import pg from 'pg'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createEventStore, createProjector, defineProjection } from '../../src/cqrs/index.js'
import { postgresAdminUrl } from '../support/postgres.js'
import { terminateSessionOf } from '../support/terminated-session.js'
import { until } from '../support/until.js'
import { postgresDb, useTestDb } from './databases.js'

const t = useTestDb(postgresDb, 'cqrs_projector_lost_connection')
let admin: pg.Client
beforeAll(async () => {
  admin = new pg.Client({ connectionString: postgresAdminUrl() })
  await admin.connect()
})
afterAll(() => admin?.end())

it('reports the lost session with the reason the server gave', async () => {
  let terminate = true
  const projection = defineProjection<{ type: 'tick'; data: { n: number } }>({
    name: 'lost_ticks',
    eventTypes: ['tick'],
    tables: { lost_ticks: (name) => [`CREATE TABLE ${name} (id TEXT PRIMARY KEY)`] },
    async apply(event, { tx, table }) {
      await tx.execute(`INSERT INTO ${table('lost_ticks')} VALUES ($1)`, [event.id])
      if (!terminate) return
      terminate = false
      await terminateSessionOf(tx, admin)
    },
  })
  const store = createEventStore(t.db)
  const reported: unknown[] = []
  const published: unknown[] = []
  const projectionErrors = channel('breakwater:cqrs:projection-error')
  const onPublished = (message: unknown): void => {
    published.push((message as { error: unknown }).error)
  }
  projectionErrors.subscribe(onPublished)
  const projector = createProjector(store, projection, {
    onError: (error) => reported.push(error),
  })
  try {
    await store.append('t-1', [{ type: 'tick', data: { n: 1 } }])
    await projector.start()
    await until(() => reported.length > 0, 'the failure to be reported')
  } finally {
    await projector.stop()
    projectionErrors.unsubscribe(onPublished)
  }
  const error = reported[0] as Error
  expect(published[0]).toBe(error)
  expect(error.message).toMatch(/not queryable/)
  expect(error.message).toContain('terminating connection due to administrator command')
  expect(error.message).toContain('57P01')
  expect((error.cause as { code?: unknown } | undefined)?.code).toBe('57P01')
})
