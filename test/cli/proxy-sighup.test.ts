// `breakwater proxy` as a real process: a SIGHUP that arrives while the proxy is still starting
// (here: its idempotency store's connection held by a relay the test controls) must not end the
// process (SIGHUP's default action), and the reload it asks for is applied once the proxy is up.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnCli } from '../process/cli-process.js'
import { type NamedUpstream, startNamedUpstream } from '../proxy/runtime/helpers.js'
import { listenOnLoopback } from '../support/loopback.js'
import { createTestDatabase, type TestDatabase } from '../support/postgres.js'

let upstream: NamedUpstream
let database: TestDatabase
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-cli-hup-'))

beforeAll(async () => {
  upstream = await startNamedUpstream('app')
  database = await createTestDatabase('proxy_sighup')
})
afterAll(async () => {
  await upstream.close()
  await database.drop()
  rmSync(dir, { recursive: true, force: true })
})

/** A TCP relay to PostgreSQL that holds every connection until release(). */
async function holdingRelay(target: URL): Promise<{
  port: number
  connected: Promise<void>
  release(): void
  close(): Promise<void>
}> {
  const held: Socket[] = []
  const open = new Set<Socket>()
  let released = false
  let firstConnection: () => void = () => {}
  const connected = new Promise<void>((resolve) => {
    firstConnection = resolve
  })
  const pipe = (client: Socket): void => {
    const server = netConnect(Number(target.port || 5432), target.hostname)
    open.add(server)
    server.on('error', () => client.destroy())
    client.on('error', () => server.destroy())
    client.pipe(server).pipe(client)
  }
  const relay: Server = createServer((client) => {
    open.add(client)
    client.pause()
    firstConnection()
    if (released) pipe(client)
    else held.push(client)
  })
  const port = await listenOnLoopback(relay)
  return {
    port,
    connected,
    release() {
      released = true
      for (const client of held.splice(0)) pipe(client)
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of open) socket.destroy()
        relay.close(() => resolve())
      }),
  }
}

describe('breakwater proxy, SIGHUP while starting', () => {
  it('survives it and reloads once started', async () => {
    const real = new URL(database.url)
    const relay = await holdingRelay(real)
    const viaRelay = new URL(database.url)
    viaRelay.hostname = '127.0.0.1'
    viaRelay.port = String(relay.port)
    // Secrets are never written in the file: the password goes through PGPASSWORD.
    const password = decodeURIComponent(viaRelay.password)
    viaRelay.password = ''
    const file = join(dir, 'proxy.yaml')
    writeFileSync(
      file,
      `services: { app: { endpoints: [${upstream.url}] } }
listeners:
  - name: in
    role: gateway
    port: 0
    routes:
      - { name: pay, match: { prefix: / }, targets: [{ service: app }], idempotency: { methods: [POST] } }
idempotency: { url: "${viaRelay.href}" }
drainTimeoutMs: 1000
`,
    )
    const cli = spawnCli(
      ['proxy', '--config', file],
      password === '' ? {} : { PGPASSWORD: password },
    )
    try {
      // The proxy is opening its store: it has not started.
      await Promise.race([
        relay.connected,
        cli.exited.then(() => {
          throw new Error(`the proxy exited before opening its store: ${cli.stderr()}`)
        }),
      ])
      expect(cli.lines.map((l) => l.msg)).not.toContain('proxy started')
      cli.child.kill('SIGHUP')
      await cli.waitForLine(
        (l) => l.msg === 'SIGHUP while starting: reloading once started',
        'the SIGHUP to be noted',
      )
      relay.release()
      await cli.waitForLine((l) => l.msg === 'proxy started', 'the start')
      await cli.waitForLine((l) => l.msg === 'config reloaded', 'the reload asked while starting')
      cli.child.kill('SIGTERM')
      expect(await cli.exited).toEqual({ code: 0, signal: null })
    } finally {
      cli.kill()
      await relay.close()
    }
  })
})
