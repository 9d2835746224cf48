// An https endpoint (undici's pool) that answers `101 Switching Protocols` to a request that
// asked for no upgrade is answered as the http: pool answers it: 502 UPSTREAM_RESPONSE_INVALID
// naming the 101 (reason UNEXPECTED_UPGRADE), logged as a malformed response. undici reports
// it as a socket error ("bad upgrade"), which was answered UPSTREAM_RESET, "closed before its
// response was complete": nothing closed early. A real TLS server writes the raw bytes.
import { createServer } from 'node:tls'
import { afterAll, describe, expect, it } from 'vitest'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { listenOnLoopback } from '../../support/loopback.js'
import { createTestCerts } from '../support/certs.js'
import { serviceConfig, startFront, testDeps, useUpstreamTest } from './helpers.js'

const { cleanups } = useUpstreamTest()
const certs = createTestCerts()
afterAll(() => certs.cleanup())

describe('a 101 from an https endpoint to a request that asked for no upgrade', () => {
  it('is answered 502 UPSTREAM_RESPONSE_INVALID naming it, and logged', async () => {
    const server = createServer({ cert: certs.server.cert, key: certs.server.key }, (socket) => {
      socket.on('error', () => {})
      socket.once('data', () =>
        socket.write(
          'HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n',
        ),
      )
    })
    const port = await listenOnLoopback(server)
    cleanups.push(() => new Promise((resolve) => server.close(resolve)))
    const clock = new ManualClock(1_000_000)
    const deps = testDeps(clock)
    const service = createServiceRuntime(
      serviceConfig([`https://127.0.0.1:${port}`], {
        retry: undefined,
        tls: {
          caFile: certs.ca.certFile,
          certFile: undefined,
          keyFile: undefined,
          serverName: 'localhost',
          verify: true,
        },
      }),
      deps,
    )
    cleanups.push(() => service.close())
    const front = await startFront(service, clock)
    cleanups.push(() => front.close())
    const response = await fetch(`${front.url}/a`)
    expect(response.status).toBe(502)
    const problem = (await response.json()) as { code: string; detail: string }
    expect(problem.code).toBe('UPSTREAM_RESPONSE_INVALID')
    expect(problem.detail).toContain('UNEXPECTED_UPGRADE')
    const logged = deps.logs.map((line) => JSON.parse(line) as Record<string, unknown>)
    expect(logged).toContainEqual(
      expect.objectContaining({ msg: 'upstream response malformed', reason: 'UNEXPECTED_UPGRADE' }),
    )
  })
})
