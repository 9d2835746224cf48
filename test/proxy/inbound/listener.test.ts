import { X509Certificate } from 'node:crypto'
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { InvalidOptionError } from '../../../src/core/errors.js'
import type {
  ForwardOutcome,
  ForwardRequest,
  ServiceRuntime,
} from '../../../src/proxy/contracts.js'
import { createAmbassadorHandler } from '../../../src/proxy/inbound/ambassador.js'
import { createListenerServer } from '../../../src/proxy/inbound/listener.js'
import { isWatchedFileEvent } from '../../../src/proxy/upstream/file-watch.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { createCa, createTestCerts, issueCert, type TestCerts } from '../support/certs.js'
import { openSocket, sendRaw } from '../support/raw-http.js'
import {
  contextWith,
  defaultLimits,
  listenerConfig,
  recordingService,
  registryOf,
} from './harness.js'

function getRequest(port: number, path = '/orders/x'): string {
  return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`
}

describe('createListenerServer options', () => {
  it('refuses limits that make no sense, naming the option', () => {
    const orders = recordingService('orders')
    const { ctx } = contextWith(() => registryOf([orders]))
    const listener = listenerConfig({
      limits: { ...defaultLimits, headersTimeoutMs: 20_000, requestTimeoutMs: 10_000 },
    })
    expect(() => createListenerServer(listener, () => {}, ctx)).toThrow(
      /listeners\.test\.limits\.headersTimeoutMs/,
    )
    const zero = listenerConfig({ limits: { ...defaultLimits, maxConnections: 0 } })
    expect(() => createListenerServer(zero, () => {}, ctx)).toThrow(InvalidOptionError)
  })

  it('refuses a TLS listener whose files do not load', () => {
    const { ctx } = contextWith(() => registryOf([]))
    const listener = listenerConfig({
      tls: {
        certFile: '/nonexistent/cert.pem',
        keyFile: '/nonexistent/key.pem',
        clientCaFile: undefined,
      },
    })
    expect(() => createListenerServer(listener, () => {}, ctx)).toThrow(/listeners\.test\.tls/)
  })
})

describe('isWatchedFileEvent', () => {
  it('reacts to the watched names, to ..-prefixed Kubernetes volume entries, and to unnamed events only', () => {
    const names = new Set(['tls.crt', 'tls.key'])
    for (const name of ['tls.crt', 'tls.key', '..data', '..data_tmp', '..2026_01_02_00_00_00.2'])
      expect(isWatchedFileEvent(name, names)).toBe(true)
    expect(isWatchedFileEvent(null, names)).toBe(true)
    expect(isWatchedFileEvent('proxy.yaml', 'proxy.yaml')).toBe(true)
    // Other files of the folder, including dot files and editors' temporary files, do not.
    for (const name of ['ca.crt', 'tls.crt.tmp', '.tls.crt.swp', '.', 'tls.crt~'])
      expect(isWatchedFileEvent(name, names)).toBe(false)
    expect(isWatchedFileEvent('other.yaml', 'proxy.yaml')).toBe(false)
  })
})

describe('slowloris and connection cap', () => {
  it('closes a connection whose request head trickles in past headersTimeoutMs', async () => {
    // Real time on purpose: this checks Node's own headers timer, which the listener
    // configures (headersTimeout plus a short connectionsCheckingInterval).
    const orders = recordingService('orders')
    const { ctx } = contextWith(() => registryOf([orders]))
    const listener = listenerConfig({
      limits: { ...defaultLimits, headersTimeoutMs: 300, requestTimeoutMs: 2_000 },
    })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()
    try {
      const bytes = `${getRequest(port).slice(0, -2)}X-Slow: ${'a'.repeat(40)}\r\n\r\n`
      const started = Date.now()
      const response = await sendRaw(port, bytes.split(''), {
        gapMs: 25,
        untilFirstResponse: false,
        timeoutMs: 5_000,
      })
      const elapsed = Date.now() - started
      expect(response.closed).toBe(true)
      expect(response.status).toBe(408)
      // Far less than the ~2.5 s the whole trickle would take.
      expect(elapsed).toBeLessThan(1_500)
      expect(orders.forwarded).toHaveLength(0)
    } finally {
      await server.close()
    }
  })

  it('closes a connection whose body trickles in past requestTimeoutMs', async () => {
    // Real time, as above: Node's request timer.
    const orders = recordingService('orders')
    const { ctx } = contextWith(() => registryOf([orders]))
    const listener = listenerConfig({
      limits: { ...defaultLimits, headersTimeoutMs: 300, requestTimeoutMs: 600 },
    })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()
    try {
      const head = `POST /orders/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 100\r\n\r\n`
      const response = await sendRaw(port, [head, ...'a'.repeat(100).split('')], {
        gapMs: 30,
        untilFirstResponse: false,
      })
      expect(response.closed).toBe(true)
      expect(response.status).toBe(408)
      expect(orders.forwarded).toHaveLength(0)
    } finally {
      await server.close()
    }
  })

  it('closes keep-alive connections idle past keepAliveTimeoutMs', async () => {
    const orders = recordingService('orders')
    const { ctx } = contextWith(() => registryOf([orders]))
    const listener = listenerConfig({ limits: { ...defaultLimits, keepAliveTimeoutMs: 200 } })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()
    try {
      const started = Date.now()
      const response = await sendRaw(port, getRequest(port), { untilFirstResponse: false })
      expect(response.status).toBe(200)
      expect(response.closed).toBe(true)
      const elapsed = Date.now() - started
      expect(elapsed).toBeGreaterThanOrEqual(150)
      // Node adds its own slack (about a second on Node 20) to the keep-alive timer.
      expect(elapsed).toBeLessThan(4_000)
    } finally {
      await server.close()
    }
  })

  it('refuses connections beyond maxConnections and accepts again when one closes', async () => {
    const orders = recordingService('orders')
    const { ctx } = contextWith(() => registryOf([orders]))
    const listener = listenerConfig({ limits: { ...defaultLimits, maxConnections: 2 } })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()
    try {
      const first = await openSocket(port)
      const second = await openSocket(port)
      await vi.waitFor(() => expect(server.connections).toBe(2), { timeout: 5_000 })
      const third = await sendRaw(port, getRequest(port), { timeoutMs: 3_000 })
      expect(third.status).toBeUndefined()
      expect(third.closed).toBe(true)
      expect(server.refusedConnections).toBe(1)
      expect(orders.forwarded).toHaveLength(0)

      first.destroy()
      await vi.waitFor(() => expect(server.connections).toBe(1), { timeout: 5_000 })
      const fourth = await sendRaw(port, getRequest(port))
      expect(fourth.status).toBe(200)
      second.destroy()
    } finally {
      await server.close()
    }
  })
})

describe('TLS termination', () => {
  let certs: TestCerts
  beforeAll(() => {
    certs = createTestCerts()
  })
  afterAll(() => certs.cleanup())

  function fingerprint(pem: string): string {
    return new X509Certificate(pem).fingerprint256
  }

  async function peerFingerprint(port: number, ca: string): Promise<string> {
    const socket = (await openSocket(port, { tls: { ca, servername: 'localhost' } })) as TLSSocket
    const print = socket.getPeerX509Certificate()?.fingerprint256 ?? ''
    socket.destroy()
    return print
  }

  it('serves HTTPS and reloads a replaced certificate for new connections', async () => {
    const dir = join(certs.dir, 'reload')
    const { mkdirSync } = await import('node:fs')
    mkdirSync(dir)
    const certFile = join(dir, 'server.pem')
    const keyFile = join(dir, 'server-key.pem')
    writeFileSync(certFile, certs.server.cert)
    writeFileSync(keyFile, certs.server.key)
    const clock = new ManualClock(Date.now())
    const orders = recordingService('orders')
    const { ctx, log } = contextWith(() => registryOf([orders]), { clock })
    const listener = listenerConfig({ tls: { certFile, keyFile, clientCaFile: undefined } })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx, {
      tlsReloadDebounceMs: 100,
    })
    const { port } = await server.listen()
    try {
      const tls = { ca: certs.ca.cert, servername: 'localhost' }
      const response = await sendRaw(port, getRequest(port), { tls })
      expect(response.status).toBe(200)
      expect(await peerFingerprint(port, certs.ca.cert)).toBe(fingerprint(certs.server.cert))

      // A new certificate from another CA, written the way cert managers do: temp file + rename.
      const ca2 = createCa(certs.dir, 'ca2', 'second CA')
      const next = issueCert(certs.dir, ca2, 'server2', 'server')
      writeFileSync(`${keyFile}.tmp`, next.key)
      renameSync(`${keyFile}.tmp`, keyFile)
      writeFileSync(`${certFile}.tmp`, next.cert)
      renameSync(`${certFile}.tmp`, certFile)
      await vi.waitFor(() => expect(clock.pendingTimers).toBeGreaterThan(0), { timeout: 5_000 })
      await clock.advance(100)
      expect(log.text()).toContain('tls certificate reloaded')
      expect(await peerFingerprint(port, ca2.cert)).toBe(fingerprint(next.cert))
      const after = await sendRaw(port, getRequest(port), {
        tls: { ca: ca2.cert, servername: 'localhost' },
      })
      expect(after.status).toBe(200)

      // A broken certificate is logged and the last good one stays in use.
      writeFileSync(
        certFile,
        '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n',
      )
      await vi.waitFor(() => expect(clock.pendingTimers).toBeGreaterThan(0), { timeout: 5_000 })
      await clock.advance(100)
      expect(log.text()).toContain('tls reload failed; keeping the previous certificate')
      expect(await peerFingerprint(port, ca2.cert)).toBe(fingerprint(next.cert))

      // A valid certificate whose key does not match is refused the same way.
      writeFileSync(certFile, certs.server.cert)
      expect(server.reloadTls()).toBe(false)
      expect(await peerFingerprint(port, ca2.cert)).toBe(fingerprint(next.cert))
    } finally {
      await server.close()
    }
  })

  it('reloads a certificate mounted from a Kubernetes secret when the kubelet swaps ..data', async () => {
    // The kubelet's atomic writer: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>. An
    // update writes a new timestamped folder, points ..data_tmp at it and renames it over
    // ..data: no event ever names tls.crt or tls.key.
    const dir = mkdtempSync(join(certs.dir, 'secret-'))
    const version = (name: string, cert: string, key: string): void => {
      mkdirSync(join(dir, name))
      writeFileSync(join(dir, name, 'tls.crt'), cert)
      writeFileSync(join(dir, name, 'tls.key'), key)
    }
    version('..2026_01_01_00_00_00.1', certs.server.cert, certs.server.key)
    symlinkSync('..2026_01_01_00_00_00.1', join(dir, '..data'))
    symlinkSync(join('..data', 'tls.crt'), join(dir, 'tls.crt'))
    symlinkSync(join('..data', 'tls.key'), join(dir, 'tls.key'))
    const clock = new ManualClock(Date.now())
    const orders = recordingService('orders')
    const { ctx, log } = contextWith(() => registryOf([orders]), { clock })
    const listener = listenerConfig({
      tls: {
        certFile: join(dir, 'tls.crt'),
        keyFile: join(dir, 'tls.key'),
        clientCaFile: undefined,
      },
    })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx, {
      tlsReloadDebounceMs: 100,
    })
    const { port } = await server.listen()
    try {
      expect(await peerFingerprint(port, certs.ca.cert)).toBe(fingerprint(certs.server.cert))
      const ca4 = createCa(certs.dir, 'ca4', 'rotated CA')
      const next = issueCert(certs.dir, ca4, 'server4', 'server')
      version('..2026_01_02_00_00_00.2', next.cert, next.key)
      symlinkSync('..2026_01_02_00_00_00.2', join(dir, '..data_tmp'))
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
      rmSync(join(dir, '..2026_01_01_00_00_00.1'), { recursive: true })
      await vi.waitFor(() => expect(clock.pendingTimers).toBeGreaterThan(0), { timeout: 5_000 })
      await clock.advance(100)
      expect(log.text()).toContain('tls certificate reloaded')
      expect(await peerFingerprint(port, ca4.cert)).toBe(fingerprint(next.cert))
    } finally {
      await server.close()
    }
  })

  it('requires a client certificate signed by clientCaFile', async () => {
    const orders = recordingService('orders')
    const { ctx } = contextWith(() => registryOf([orders]))
    const listener = listenerConfig({
      tls: {
        certFile: certs.server.certFile,
        keyFile: certs.server.keyFile,
        clientCaFile: certs.ca.certFile,
      },
    })
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()
    try {
      const base = { ca: certs.ca.cert, servername: 'localhost' }
      const withCert = await sendRaw(port, getRequest(port), {
        tls: { ...base, cert: certs.client.cert, key: certs.client.key },
      })
      expect(withCert.status).toBe(200)

      const without = await sendRaw(port, getRequest(port), { tls: base }).catch(() => undefined)
      expect(without?.status).toBeUndefined()

      const otherCa = createCa(certs.dir, 'ca3', 'unrelated CA')
      const stranger = issueCert(certs.dir, otherCa, 'stranger', 'client')
      const foreign = await sendRaw(port, getRequest(port), {
        tls: { ...base, cert: stranger.cert, key: stranger.key },
      }).catch(() => undefined)
      expect(foreign?.status).toBeUndefined()
      expect(orders.forwarded).toHaveLength(1)
    } finally {
      await server.close()
    }
  })
})

describe('graceful drain', () => {
  it('a close while listen() still resolves the host name: the late bind is undone, listen() rejects', async () => {
    // A start that gave up on a slow resolver closes the server; the bind that completes after
    // must not leave a port open that nobody serves (nor report an address).
    const { ctx } = contextWith(() => registryOf([]))
    const server = createListenerServer(listenerConfig({ host: 'localhost' }), () => {}, ctx)
    const listening = server.listen().then(
      () => 'bound',
      (error: unknown) => error,
    )
    await server.close(0)
    const result = await listening
    expect(result).toBeInstanceOf(Error)
    expect((result as Error).message).toMatch(/closed before it was bound/)
    expect(server.address()).toBeUndefined()
  })
  // A service whose responses wait until the test releases them.
  function heldService(): ServiceRuntime & { release(): void; started: Promise<void> } {
    const base = recordingService('slow')
    let release = (): void => {}
    const released = new Promise<void>((resolve) => {
      release = resolve
    })
    let started = (): void => {}
    const startedPromise = new Promise<void>((resolve) => {
      started = resolve
    })
    return {
      ...base,
      release: () => release(),
      started: startedPromise,
      async forward(req: ForwardRequest, res: ServerResponse): Promise<ForwardOutcome> {
        started()
        await released
        return base.forward(req, res)
      },
    }
  }

  /** A listener on a ManualClock with one request in flight, held by the slow service. */
  async function oneRequestHeld() {
    const slow = heldService()
    const clock = new ManualClock(Date.now())
    const { ctx } = contextWith(() => registryOf([slow]), { clock })
    const listener = listenerConfig()
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()
    const inFlight = sendRaw(port, getRequest(port, '/slow/x'), { untilFirstResponse: false })
    await slow.started
    return { slow, clock, server, inFlight }
  }

  it('stops accepting, closes idle connections, and lets the request in flight finish', async () => {
    const slow = heldService()
    const orders = recordingService('orders')
    const clock = new ManualClock(Date.now())
    const { ctx } = contextWith(() => registryOf([slow, orders]), { clock })
    const listener = listenerConfig()
    const server = createListenerServer(listener, createAmbassadorHandler(listener, ctx), ctx)
    const { port } = await server.listen()

    const idle = await openSocket(port)
    let idleClosed = false
    idle.on('close', () => {
      idleClosed = true
    })
    idle.resume()
    idle.write(getRequest(port))
    await vi.waitFor(() => expect(orders.forwarded).toHaveLength(1), { timeout: 5_000 })

    const inFlight = sendRaw(port, getRequest(port, '/slow/x'), { untilFirstResponse: false })
    await slow.started
    let closed = false
    const closing = server.close(10_000).then(() => {
      closed = true
    })
    await vi.waitFor(() => expect(idleClosed).toBe(true), { timeout: 5_000 })
    await expect(openSocket(port)).rejects.toThrow(/ECONNREFUSED/)
    expect(closed).toBe(false)

    slow.release()
    const response = await inFlight
    expect(response.status).toBe(200)
    expect(response.headers.connection).toBe('close')
    expect(response.closed).toBe(true)
    await closing
    expect(server.connections).toBe(0)
  })

  it('destroys connections still busy when drainMs runs out', async () => {
    const { slow, clock, server, inFlight } = await oneRequestHeld()
    let closed = false
    const closing = server.close(5_000).then(() => {
      closed = true
    })
    await clock.advance(4_999)
    expect(closed).toBe(false)
    await clock.advance(1)
    await closing
    const response = await inFlight
    expect(response.status).toBeUndefined()
    expect(response.closed).toBe(true)
    slow.release()
  })

  it('a second close() resolves only when the connections are gone, and a shorter drainMs cuts them sooner', async () => {
    const { slow, clock, server, inFlight } = await oneRequestHeld()
    let closed = 0
    const first = server.close(60_000).then(() => closed++)
    const second = server.close(5_000).then(() => closed++)
    await clock.advance(4_999)
    expect(closed).toBe(0)
    expect(server.connections).toBe(1)
    await clock.advance(1)
    await Promise.all([first, second])
    expect(server.connections).toBe(0)
    const response = await inFlight
    expect(response.status).toBeUndefined()
    expect(response.closed).toBe(true)
    // A later, longer drainMs does not put the cut off either.
    await server.close(120_000)
    slow.release()
  })
})
