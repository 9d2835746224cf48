// startProxy's start failures carry a stable code and the setting at fault, so a caller (the
// CLI, an embedding app, an orchestrator's wrapper) can tell a port in use from bad TLS files
// or a store that does not open without matching message text.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BreakwaterError } from '../../../src/core/errors.js'
import { createJsonLogger } from '../../../src/observability/logger.js'
import { ProxyStartError, startProxy } from '../../../src/proxy/index.js'
import { withTakenPort } from '../../support/loopback.js'
import { type NamedUpstream, startNamedUpstream } from './helpers.js'

const quiet = createJsonLogger({ level: 'silent' })
let upstream: NamedUpstream
let dir: string

beforeAll(async () => {
  upstream = await startNamedUpstream('a')
  dir = mkdtempSync(join(tmpdir(), 'bw-start-errors-'))
})
afterAll(async () => {
  await upstream.close()
  rmSync(dir, { recursive: true, force: true })
})

/** The error startProxy rejects with (and the proxy it started, closed, if it did not). */
async function startError(yaml: string, env: Record<string, string> = {}): Promise<unknown> {
  try {
    const proxy = await startProxy({ config: yaml, logger: quiet, watch: false, env })
    await proxy.close(0)
    return undefined
  } catch (error) {
    return error
  }
}

const service = () => `services: { a: { endpoints: [${upstream.url}] } }\n`

describe('startProxy start failures', () => {
  it('a listener port in use: PROXY_LISTEN_FAILED naming the listener, the errno in the cause', async () => {
    await withTakenPort(async (port) => {
      const error = await startError(
        `${service()}listeners: [{ name: out, role: ambassador, port: ${port} }]\n`,
      )
      expect(error).toBeInstanceOf(ProxyStartError)
      expect(BreakwaterError.is(error)).toBe(true)
      expect(error).toMatchObject({ code: 'PROXY_LISTEN_FAILED', setting: 'listeners.out' })
      expect((error as Error).message).toContain(
        `listeners.out: cannot listen on 127.0.0.1:${port}`,
      )
      expect(((error as Error).cause as { code?: string }).code).toBe('EADDRINUSE')
    })
  })

  it('an admin port in use: PROXY_LISTEN_FAILED naming admin', async () => {
    await withTakenPort(async (port) => {
      const error = await startError(
        `${service()}listeners: [{ name: out, role: ambassador, port: 0 }]\nadmin: { port: ${port}, token: { env: BW_TOKEN } }\n`,
        { BW_TOKEN: 'a-long-enough-admin-token' },
      )
      expect(error).toBeInstanceOf(ProxyStartError)
      expect(error).toMatchObject({ code: 'PROXY_LISTEN_FAILED', setting: 'admin' })
      expect((error as Error).message).toContain(`admin (127.0.0.1:${port})`)
    })
  })

  it("a listener's TLS files that cannot be used: PROXY_TLS_INVALID naming the listener's tls", async () => {
    const error = await startError(
      `${service()}listeners: [{ name: in, role: gateway, port: 0, tls: { certFile: ${dir}/none.pem, keyFile: ${dir}/none-key.pem }, routes: [{ name: r, targets: [{ service: a }] }] }]\n`,
    )
    expect(error).toBeInstanceOf(ProxyStartError)
    expect(error).toMatchObject({ code: 'PROXY_TLS_INVALID', setting: 'listeners.in.tls' })
    expect((error as Error).message).toContain('listeners.in.tls')
  })

  it("a service's TLS files that cannot be used: PROXY_TLS_INVALID naming the file's setting", async () => {
    const error = await startError(
      `services: { pay.v2: { endpoints: [https://127.0.0.1:1], tls: { caFile: ${dir}/no-ca.pem } } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`,
    )
    expect(error).toBeInstanceOf(ProxyStartError)
    expect(error).toMatchObject({
      code: 'PROXY_TLS_INVALID',
      setting: 'services.pay.v2.tls.caFile',
    })
    expect((error as Error).message).toContain('services.pay.v2.tls.caFile')
  })

  it('an idempotency store that does not open: PROXY_IDEMPOTENCY_STORE_FAILED naming idempotency.url', async () => {
    const error = await startError(
      `${service()}listeners: [{ name: in, role: gateway, port: 0, routes: [{ name: r, targets: [{ service: a }], idempotency: {} }] }]\nidempotency: { url: "sqlite:${dir}" }\n`,
    )
    expect(error).toBeInstanceOf(ProxyStartError)
    expect(error).toMatchObject({
      code: 'PROXY_IDEMPOTENCY_STORE_FAILED',
      setting: 'idempotency.url',
    })
    expect((error as Error).message).toContain(`idempotency.url: cannot open sqlite:${dir}`)
  })
})
