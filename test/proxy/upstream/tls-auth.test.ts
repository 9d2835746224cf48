import { copyFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { ServiceConfig, UpstreamTlsConfig } from '../../../src/proxy/contracts.js'
import { createServiceRuntime } from '../../../src/proxy/upstream/index.js'
import {
  type CertFiles,
  createCa,
  createTestCerts,
  issueCert,
  type TestCerts,
} from '../support/certs.js'
import { type FaultyUpstream, startFaultyUpstream } from '../support/faulty-upstream.js'
import { eventually, forwardRequest, serviceConfig, testDeps } from './helpers.js'

let certs: TestCerts
let otherCa: CertFiles
let otherServer: CertFiles
let secondClient: CertFiles

beforeAll(() => {
  certs = createTestCerts()
  otherCa = createCa(certs.dir, 'other-ca', 'another test CA')
  otherServer = issueCert(certs.dir, otherCa, 'other-server', 'server')
  secondClient = issueCert(certs.dir, certs.ca, 'client-2', 'client', {
    commonName: 'second-client',
  })
})
afterAll(() => certs.cleanup())

const cleanups: Array<() => Promise<unknown> | unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function httpsUpstream(
  server: CertFiles,
  mtls = false,
  fallback?: Parameters<typeof startFaultyUpstream>[0],
): Promise<FaultyUpstream> {
  const upstream = await startFaultyUpstream({
    ...fallback,
    tls: {
      cert: server.cert,
      key: server.key,
      ...(mtls ? { requestCert: true, rejectUnauthorized: true, ca: certs.ca.cert } : {}),
    },
  })
  cleanups.push(() => upstream.close())
  return upstream
}

function tls(overrides: Partial<UpstreamTlsConfig>): UpstreamTlsConfig {
  return {
    caFile: undefined,
    certFile: undefined,
    keyFile: undefined,
    serverName: undefined,
    verify: true,
    ...overrides,
  }
}

function start(config: ServiceConfig) {
  const deps = testDeps()
  const service = createServiceRuntime(config, deps)
  cleanups.push(() => service.close())
  return { service, deps }
}

describe('TLS origination', () => {
  it('verifies the upstream against a custom CA, and refuses it without that CA', async () => {
    const up = await httpsUpstream(certs.server)
    const trusted = start(serviceConfig([up.url], { tls: tls({ caFile: certs.ca.certFile }) }))
    const ok = await trusted.service.exchange(forwardRequest(), 100)
    expect(ok.status).toBe(200)

    const untrusted = start(serviceConfig([up.url], { retry: undefined }))
    await expect(untrusted.service.exchange(forwardRequest(), 100)).rejects.toMatchObject({
      code: 'UPSTREAM_CONNECT_FAILED',
      status: 502,
    })
    expect(up.requests).toHaveLength(1)
  })

  it('checks the name: a certificate for another name is refused unless serverName matches', async () => {
    const up = await httpsUpstream(certs.server)
    const wrongName = start(
      serviceConfig([up.url], {
        retry: undefined,
        tls: tls({ caFile: certs.ca.certFile, serverName: 'payments.internal' }),
      }),
    )
    await expect(wrongName.service.exchange(forwardRequest(), 10)).rejects.toMatchObject({
      code: 'UPSTREAM_CONNECT_FAILED',
    })
    const rightName = start(
      serviceConfig([up.url], { tls: tls({ caFile: certs.ca.certFile, serverName: 'localhost' }) }),
    )
    expect((await rightName.service.exchange(forwardRequest(), 10)).status).toBe(200)
  })

  it('verify: false connects to any certificate and logs a warning at start', async () => {
    const up = await httpsUpstream(otherServer)
    const { service, deps } = start(serviceConfig([up.url], { tls: tls({ verify: false }) }))
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(200)
    expect(deps.logs.some((l) => l.includes('TLS verification is off'))).toBe(true)
  })

  it('presents the client certificate (mTLS), and the upstream refuses a proxy without one', async () => {
    const up = await httpsUpstream(certs.server, true)
    const withCert = start(
      serviceConfig([up.url], {
        tls: tls({
          caFile: certs.ca.certFile,
          certFile: certs.client.certFile,
          keyFile: certs.client.keyFile,
        }),
      }),
    )
    expect((await withCert.service.exchange(forwardRequest(), 10)).status).toBe(200)
    expect(up.requests[0]!.clientCertCn).toBe('breakwater-client')

    const without = start(
      serviceConfig([up.url], { retry: undefined, tls: tls({ caFile: certs.ca.certFile }) }),
    )
    await expect(without.service.exchange(forwardRequest(), 10)).rejects.toMatchObject({
      status: 502,
    })
    expect(up.requests).toHaveLength(1)
  })

  it('reloads a changed CA file: new connections use it, a request in flight on the old pool completes', async () => {
    const held = await httpsUpstream(certs.server, false, { fallback: { kind: 'hold' } })
    const other = await httpsUpstream(otherServer)
    const caFile = join(certs.dir, 'reload-ca.pem')
    copyFileSync(certs.ca.certFile, caFile)
    const { service, deps } = start(
      serviceConfig([held.url, other.url], { retry: undefined, tls: tls({ caFile }) }),
    )
    // Round robin: the first request goes to the held upstream and waits there.
    const inFlight = service.exchange(forwardRequest({ target: '/held' }), 100)
    await held.waitForRequests(1)
    await expect(service.exchange(forwardRequest(), 10)).rejects.toMatchObject({
      code: 'UPSTREAM_CONNECT_FAILED',
    })
    writeFileSync(caFile, `${certs.ca.cert}\n${otherCa.cert}`)
    await eventually(() => deps.logs.some((l) => l.includes('TLS files reloaded')))
    held.release()
    const old = await inFlight
    expect(old.status).toBe(200)
    expect(old.body.toString()).toBe('ok /held')
    // Round robin again: held (now answering at once), then the other CA's upstream.
    held.fallback = { kind: 'respond' }
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(200)
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(200)
    expect(other.requests.length).toBeGreaterThanOrEqual(1)
  })

  it('reloads the client certificate once certificate and key match again', async () => {
    const up = await httpsUpstream(certs.server, true)
    const certFile = join(certs.dir, 'reload-client.pem')
    const keyFile = join(certs.dir, 'reload-client-key.pem')
    copyFileSync(certs.client.certFile, certFile)
    copyFileSync(certs.client.keyFile, keyFile)
    const { service, deps } = start(
      serviceConfig([up.url], { tls: tls({ caFile: certs.ca.certFile, certFile, keyFile }) }),
    )
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[0]!.clientCertCn).toBe('breakwater-client')
    // The certificate first: with the old key it is not a valid pair, and is not applied.
    writeFileSync(certFile, secondClient.cert)
    await eventually(() => deps.logs.some((l) => l.includes('do not form a valid set')))
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[1]!.clientCertCn).toBe('breakwater-client')
    writeFileSync(keyFile, secondClient.key)
    await eventually(() => deps.logs.some((l) => l.includes('TLS files reloaded')))
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[2]!.clientCertCn).toBe('second-client')
  })
})

describe('TLS files refused at start', () => {
  it('refuses a CA file of garbage and a key that is not the certificate’s, naming the service', () => {
    const garbage = join(certs.dir, 'garbage.pem')
    writeFileSync(garbage, 'not a certificate\n')
    const config = (overrides: Partial<UpstreamTlsConfig>) =>
      serviceConfig(['https://127.0.0.1:1'], { tls: tls(overrides) })
    expect(() => createServiceRuntime(config({ caFile: garbage }), testDeps())).toThrow(
      /services\.\w+\.tls\.caFile: expected a file holding a PEM certificate, got ".*garbage\.pem"/,
    )
    expect(() =>
      createServiceRuntime(
        config({ certFile: certs.client.certFile, keyFile: secondClient.keyFile }),
        testDeps(),
      ),
    ).toThrow(
      /services\.(\w+)\.tls\.keyFile: expected the private key of services\.\1\.tls\.certFile/,
    )
  })
})

describe('outbound credentials', () => {
  it('adds a bearer token from the environment, replacing the caller’s, and never shows it', async () => {
    process.env.BREAKWATER_TEST_ORDERS_TOKEN = 'env-token-s3cret'
    cleanups.push(() => {
      delete process.env.BREAKWATER_TEST_ORDERS_TOKEN
    })
    const up = await startFaultyUpstream()
    cleanups.push(() => up.close())
    const { service, deps } = start(
      serviceConfig([up.url], {
        auth: { kind: 'bearer', token: { env: 'BREAKWATER_TEST_ORDERS_TOKEN' } },
      }),
    )
    await service.exchange(forwardRequest({ headers: { authorization: 'Bearer from-client' } }), 10)
    expect(up.requests[0]!.headers.authorization).toBe('Bearer env-token-s3cret')
    expect(JSON.stringify(service.state())).not.toContain('s3cret')
    expect(deps.logs.join('')).not.toContain('s3cret')
  })

  it('adds an API key from a file and re-reads it when the file changes', async () => {
    const up = await startFaultyUpstream()
    cleanups.push(() => up.close())
    const keyFile = join(certs.dir, 'api-key')
    writeFileSync(keyFile, 'key-one-s3cret\n')
    const { service, deps } = start(
      serviceConfig([up.url], {
        auth: { kind: 'api-key', header: 'X-Api-Key', key: { file: keyFile } },
      }),
    )
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[0]!.headers['x-api-key']).toBe('key-one-s3cret')
    writeFileSync(keyFile, 'key-two-s3cret\n')
    await eventually(() => deps.logs.some((l) => l.includes('upstream credential reloaded')))
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[1]!.headers['x-api-key']).toBe('key-two-s3cret')
    expect(deps.logs.join('')).not.toContain('s3cret')
    expect(JSON.stringify(service.state())).not.toContain('s3cret')
  })

  it('treats a secret a header cannot carry (a line break inside) as missing, not as a connect failure of the service', async () => {
    const up = await startFaultyUpstream()
    cleanups.push(() => up.close())
    const keyFile = join(certs.dir, 'api-key-two-lines')
    writeFileSync(keyFile, 'line-one-s3cret\nline-two-s3cret\n')
    const { service, deps } = start(
      serviceConfig([up.url], {
        auth: { kind: 'api-key', header: 'X-Api-Key', key: { file: keyFile } },
        breaker: { failureThreshold: 1, cooldownMs: 60_000, halfOpenProbes: 1 },
      }),
    )
    expect(deps.logs.some((l) => l.includes('upstream credential unusable'))).toBe(true)
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(200)
    expect(up.requests[0]!.headers['x-api-key']).toBeUndefined()
    expect(service.state().breaker).toBe('closed')
    // A reload to such a value does the same; a good one is used again.
    writeFileSync(keyFile, 'good-s3cret\n')
    await eventually(() => deps.logs.some((l) => l.includes('upstream credential reloaded')))
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[1]!.headers['x-api-key']).toBe('good-s3cret')
    writeFileSync(keyFile, 'bad\u0000-s3cret')
    await eventually(
      () => deps.logs.filter((l) => l.includes('upstream credential unusable')).length === 2,
    )
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(200)
    expect(up.requests[2]!.headers['x-api-key']).toBeUndefined()
    expect(deps.logs.join('')).not.toContain('s3cret')
  })

  it('warns (naming the source, not a value) when the secret is missing, and sends no header', async () => {
    const up = await startFaultyUpstream()
    cleanups.push(() => up.close())
    const { service, deps } = start(
      serviceConfig([up.url], {
        auth: { kind: 'bearer', token: { env: 'BREAKWATER_TEST_UNSET_TOKEN' } },
      }),
    )
    await service.exchange(forwardRequest(), 10)
    expect(up.requests[0]!.headers.authorization).toBeUndefined()
    expect(deps.logs.some((l) => l.includes('env BREAKWATER_TEST_UNSET_TOKEN'))).toBe(true)
  })
})
