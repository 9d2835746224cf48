// A TLS listener's certificate watch survives the folder of its files being removed and created
// again (a secret volume remounted, a tool that replaces the folder): the watch is armed again
// after a delay (on the injected clock) and the new certificate is served.
import { X509Certificate } from 'node:crypto'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer } from '../../../src/proxy/inbound/listener.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { createCa, createTestCerts, issueCert, type TestCerts } from '../support/certs.js'
import { openSocket } from '../support/raw-http.js'
import { contextWith, listenerConfig, recordingService, registryOf } from './harness.js'

let certs: TestCerts
beforeAll(() => {
  certs = createTestCerts()
})
afterAll(() => certs.cleanup())

async function peerFingerprint(port: number, ca: string): Promise<string> {
  const socket = (await openSocket(port, { tls: { ca, servername: 'localhost' } })) as TLSSocket
  const print = socket.getPeerX509Certificate()?.fingerprint256 ?? ''
  socket.destroy()
  return print
}

describe('TLS certificate watch', () => {
  it('watches again after the folder of the files was removed and created again', async () => {
    const dir = join(certs.dir, 'mounted')
    mkdirSync(dir)
    const certFile = join(dir, 'tls.crt')
    const keyFile = join(dir, 'tls.key')
    writeFileSync(certFile, certs.server.cert)
    writeFileSync(keyFile, certs.server.key)
    const clock = new ManualClock(Date.now())
    const { ctx, log } = contextWith(() => registryOf([recordingService('orders')]), { clock })
    const listener = listenerConfig({ tls: { certFile, keyFile, clientCaFile: undefined } })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx, {
      tlsReloadDebounceMs: 100,
    })
    const { port } = await server.listen()
    try {
      rmSync(dir, { recursive: true })
      await vi.waitFor(() => expect(log.text()).toContain('tls file watch failed'), {
        timeout: 5_000,
      })
      const ca2 = createCa(certs.dir, 'ca-rewatch', 'remounted CA')
      const next = issueCert(certs.dir, ca2, 'server-rewatch', 'server')
      mkdirSync(dir)
      writeFileSync(certFile, next.cert)
      writeFileSync(keyFile, next.key)
      // The watch is armed again, reads the files, and the reload's debounce runs.
      await clock.advance(1_000)
      await vi.waitFor(() => expect(clock.nextTimerAt()).toBeDefined(), { timeout: 5_000 })
      await clock.advance(100)
      expect(log.text()).toContain('tls certificate reloaded')
      expect(await peerFingerprint(port, ca2.cert)).toBe(
        new X509Certificate(next.cert).fingerprint256,
      )
    } finally {
      await server.close(0)
    }
  })
})
