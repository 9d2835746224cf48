// close() while a connection is still being opened to a server that accepted it and never
// answers (a hung server, a half-up failover): pg-pool's end() waits for that connect, so
// close() returned only when connectionTimeoutMs (10 s by default; never, with 0) gave up, and
// the socket held the process open until then. A `breakwater relay` sent SIGTERM while it
// connected sat out the whole bound. close() now destroys the sockets no server has answered
// yet: nothing was sent on them, and no session exists to end. Found by exploratory testing.
import { createServer, type Server, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createPostgresDriver } from '../../src/stores/postgres.js'

const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

/** A server that accepts every connection and never sends a byte. */
async function silentServer(): Promise<{ port: number; accepted: Promise<Socket> }> {
  let accept: (socket: Socket) => void = () => {}
  const accepted = new Promise<Socket>((resolve) => {
    accept = resolve
  })
  const sockets = new Set<Socket>()
  const server: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    accept(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  )
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return { port: address.port, accepted }
}

describe('PostgresDriver.close() with a connect under way that the server never answers', () => {
  it('refuses the waiting statement, closes the socket and resolves', async () => {
    const { port, accepted } = await silentServer()
    const db = await createPostgresDriver({
      connectionString: `postgres://app:secret@127.0.0.1:${port}/app`,
      // No bound of its own: only close() can end this connect.
      connectionTimeoutMs: 0,
    })
    const statement = db.query('SELECT 1')
    statement.catch(() => {})
    const socket = await accepted
    const socketClosed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
    await db.close()
    await expect(statement).rejects.toMatchObject({ code: 'STORE_CLOSED' })
    await socketClosed
  })

  it('also ends a transaction still waiting for its connection', async () => {
    const { port, accepted } = await silentServer()
    const db = await createPostgresDriver({
      connectionString: `postgres://app:secret@127.0.0.1:${port}/app`,
      connectionTimeoutMs: 0,
    })
    const transaction = db.transaction(async (tx) => tx.query('SELECT 1'))
    transaction.catch(() => {})
    await accepted
    await db.close()
    await expect(transaction).rejects.toMatchObject({ code: 'STORE_CLOSED' })
  })
})
