// A pooled connection the server ends right after it connects, on real PostgreSQL. When the
// server's FATAL (pg_terminate_backend's 57P01, a restart's 57P01/57P02) arrives in the same
// socket read as the ReadyForQuery that completes the connect, pg emits 'error' on the client
// in the same tick as pg-pool hands it out (pg-pool drops its own idle 'error' listener at that
// moment): a listener added only after an await came too late, nobody listened, and the process
// died with "Unhandled 'error' event" (found by exploratory testing: pg_terminate_backend in a
// loop under load). A TCP proxy between the driver and the server makes that timing
// deterministic: for an armed connection, it appends the FATAL to the server's startup bytes
// right behind ReadyForQuery, in one write, and closes.
import { createServer, type Socket, connect as tcpConnect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPostgresDriver } from '../../src/stores/postgres.js'
import type { SqlDriver } from '../../src/stores/types.js'
import { listenOnLoopback } from '../support/loopback.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'

/** The ErrorResponse PostgreSQL sends for pg_terminate_backend. */
function terminatedByAdministrator(): Buffer {
  const fields: [string, string][] = [
    ['S', 'FATAL'],
    ['V', 'FATAL'],
    ['C', '57P01'],
    ['M', 'terminating connection due to administrator command'],
  ]
  const body = Buffer.concat([
    ...fields.map(([kind, value]) => Buffer.from(`${kind}${value}\0`)),
    Buffer.from([0]),
  ])
  const header = Buffer.alloc(5)
  header.write('E', 0)
  header.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([header, body])
}

interface StartupFaultProxy {
  readonly port: number
  /** The next `count` connections are ended by the "server" right after they connect. */
  arm(count: number): void
  close(): Promise<void>
}

async function startStartupFaultProxy(host: string, port: number): Promise<StartupFaultProxy> {
  let armed = 0
  const sockets = new Set<Socket>()
  const track = (socket: Socket): void => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => socket.destroy())
  }
  const server = createServer((client) => {
    const upstream = tcpConnect({ host, port })
    track(client)
    track(upstream)
    let fault = armed > 0
    if (fault) armed--
    client.on('data', (chunk) => upstream.write(chunk))
    // Server messages are passed on whole (type byte, then a length that counts itself), so
    // that the ReadyForQuery ending the startup can be found.
    let pending = Buffer.alloc(0)
    upstream.on('data', (chunk) => {
      if (!fault) {
        client.write(chunk)
        return
      }
      pending = Buffer.concat([pending, chunk])
      let end = 0
      while (pending.length - end >= 5) {
        const length = pending.readInt32BE(end + 1)
        if (pending.length - end < length + 1) break
        const type = String.fromCharCode(pending[end] as number)
        end += length + 1
        if (type === 'Z') {
          fault = false
          client.end(Buffer.concat([pending.subarray(0, end), terminatedByAdministrator()]))
          upstream.destroy()
          return
        }
      }
      client.write(pending.subarray(0, end))
      pending = pending.subarray(end)
    })
    client.on('close', () => upstream.destroy())
    upstream.on('close', () => {
      if (!client.writableEnded) client.destroy()
    })
  })
  const listening = await listenOnLoopback(server)
  return {
    port: listening,
    arm: (count) => {
      armed = count
    },
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

describe('PostgreSQL pooled connection ended by the server as it connects', () => {
  let database: TestDatabase
  let proxy: StartupFaultProxy
  let url: string
  const opened: SqlDriver[] = []

  beforeAll(async () => {
    database = await createTestDatabase('pg_lost_on_connect')
    const direct = new URL(database.url)
    proxy = await startStartupFaultProxy(direct.hostname, Number(direct.port || 5432))
    direct.host = `127.0.0.1:${proxy.port}`
    url = direct.toString()
  })
  afterAll(async () => {
    for (const db of opened) await db.close().catch(() => {})
    await proxy?.close()
    await database?.drop()
  })

  async function open(): Promise<SqlDriver> {
    const db = await createPostgresDriver({ connectionString: url })
    opened.push(db)
    return db
  }

  it("fails the statement with the server's error, and the next one runs", async () => {
    const db = await open()
    proxy.arm(1)
    await expect(db.query('SELECT 1 AS n')).rejects.toMatchObject({ code: '57P01' })
    await expect(db.query('SELECT 1 AS n')).resolves.toEqual([{ n: 1 }])
  })

  it("fails the transaction with the server's error before its callback runs", async () => {
    const db = await open()
    proxy.arm(1)
    let ran = false
    await expect(
      db.transaction(async (tx) => {
        ran = true
        return tx.query('SELECT 1 AS n')
      }),
    ).rejects.toMatchObject({ code: '57P01' })
    expect(ran).toBe(false)
    await expect(db.transaction((tx) => tx.query('SELECT 1 AS n'))).resolves.toEqual([{ n: 1 }])
  })

  it('keeps serving concurrent statements while several new connections are ended', async () => {
    const db = await open()
    proxy.arm(4)
    const outcomes = await Promise.allSettled(
      Array.from({ length: 8 }, () => db.query('SELECT 1 AS n')),
    )
    const failures = outcomes.filter((o) => o.status === 'rejected')
    expect(failures).toHaveLength(4)
    for (const failure of failures) expect(failure.reason).toMatchObject({ code: '57P01' })
    await expect(db.query('SELECT 1 AS n')).resolves.toEqual([{ n: 1 }])
  })
})
