// close() while a connection is still being opened to a server that accepted it and never
// answers (a hung server, a half-up failover): pg-pool's end() waits for that connect, so
// close() returned only when connectionTimeoutMs (10 s by default; never, with 0) gave up, and
// the socket held the process open until then. A `breakwater relay` sent SIGTERM while it
// connected sat out the whole bound. close() now destroys the sockets no server has answered
// yet: nothing was sent on them, and no session exists to end. Found by exploratory testing.
import { afterEach, describe, expect, it } from 'vitest'
import { createPostgresDriver } from '../../src/stores/postgres.js'
import { startSilentServer } from '../support/silent-server.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

/** A driver whose connects go to a server that never answers, and that server's first socket. */
async function driverOnSilentServer() {
  const silent = await startSilentServer()
  cleanups.push(() => silent.close())
  const db = await createPostgresDriver({
    connectionString: `postgres://app:secret@127.0.0.1:${silent.port}/app`,
    // No bound of its own: only close() can end this connect.
    connectionTimeoutMs: 0,
  })
  return { db, firstConnection: silent.firstConnection }
}

describe('PostgresDriver.close() with a connect under way that the server never answers', () => {
  it('refuses the waiting statement, closes the socket and resolves', async () => {
    const { db, firstConnection } = await driverOnSilentServer()
    const statement = db.query('SELECT 1')
    statement.catch(() => {})
    const socket = await firstConnection
    const socketClosed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
    await db.close()
    await expect(statement).rejects.toMatchObject({ code: 'STORE_CLOSED' })
    await socketClosed
  })

  it('also ends a transaction still waiting for its connection', async () => {
    const { db, firstConnection } = await driverOnSilentServer()
    const transaction = db.transaction(async (tx) => tx.query('SELECT 1'))
    transaction.catch(() => {})
    await firstConnection
    await db.close()
    await expect(transaction).rejects.toMatchObject({ code: 'STORE_CLOSED' })
  })
})
