// `match.caseSensitive: false`: a route whose prefix is compared without regard to the case of
// ASCII letters, for apps that route that way (Express by default). With `/pay` guarded by
// idempotency and a `/` catch-all to the same Express app, `POST /PAY` took the catch-all,
// skipped the Idempotency-Key rule, and the app charged it as `/pay`, once per retry.

import { afterEach, describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import type { RouteConfig } from '../../../src/proxy/contracts.js'
import { createRouteTable, stripPathPrefix } from '../../../src/proxy/inbound/routes.js'
import { problemsOf } from '../config/problems.js'
import { route } from './fixtures.js'
import { sendJson, startUpstream } from './harness.js'
import { startSqliteGuardedGateway } from './sqlite-guard.js'

const cleanups: (() => Promise<void> | void)[] = []
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.()
})

function payRoute(caseSensitive: boolean | undefined, stripPrefix?: string): RouteConfig {
  const base = route('pay', '/pay', [{ service: 'app', weight: 1 }], { stripPrefix })
  return { ...base, match: { ...base.match, methods: ['POST'], caseSensitive } }
}
const rest = route('rest', '/', [{ service: 'app', weight: 1 }])

describe('route matching and case', () => {
  it('is case-sensitive by default, as before', () => {
    for (const caseSensitive of [undefined, true]) {
      const table = createRouteTable([payRoute(caseSensitive), rest])
      expect(table.match('POST', '/pay/1', {})?.name).toBe('pay')
      expect(table.match('POST', '/PAY', {})?.name).toBe('rest')
      expect(table.match('POST', '/Pay/1', {})?.name).toBe('rest')
    }
  })

  it('ignores the case of ASCII letters with caseSensitive: false, at segment boundaries still', () => {
    const table = createRouteTable([payRoute(false), rest])
    for (const path of ['/pay', '/PAY', '/Pay/', '/pAy/1'])
      expect(table.match('POST', path, {})?.name, path).toBe('pay')
    expect(table.match('POST', '/PAYX', {})?.name).toBe('rest')
    expect(table.match('GET', '/PAY', {})?.name).toBe('rest')
    // A 405 lists the methods of the routes the path is under, in any case.
    const onlyPay = createRouteTable([payRoute(false)])
    expect(onlyPay.allowedMethods('/PAY/1', {})).toEqual(['POST'])
  })

  it('strips the prefix in whatever case the request spelt it', () => {
    expect(stripPathPrefix('/PAY/x', '/pay', false)).toBe('/x')
    expect(stripPathPrefix('/Pay', '/pay', false)).toBe('/')
    expect(stripPathPrefix('/PAY/x', '/pay')).toBe('/PAY/x')
    expect(stripPathPrefix('/PAYX', '/pay', false)).toBe('/PAYX')
  })

  it('guards POST /PAY when the guarded route ignores case: no key, no charge', async () => {
    let charges = 0
    const app = await startUpstream((_req, res) => {
      charges++
      sendJson(res, 200, { charged: charges })
    })
    cleanups.push(() => app.close())
    const guarded = {
      ...payRoute(false),
      idempotency: { methods: ['POST'], ttlMs: 3_600_000 },
    }
    const gw = await startSqliteGuardedGateway({ app: app.url }, [guarded, rest], cleanups)
    const post = (path: string, key?: string) =>
      fetch(`${gw.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
        body: '{"amount":5}',
      })
    for (const path of ['/PAY', '/Pay']) {
      const res = await post(path)
      await res.arrayBuffer()
      expect(res.status, path).toBe(400)
    }
    expect(charges).toBe(0)
    for (let i = 0; i < 2; i++) (await post('/PAY', 'k1')).body?.cancel()
    const replay = await post('/PAY', 'k1')
    await replay.arrayBuffer()
    expect(replay.headers.get('idempotent-replayed')).toBe('true')
    // Another spelling of the path is another request to the guard: refused, not run.
    const respelt = await post('/pay', 'k1')
    await respelt.arrayBuffer()
    expect(respelt.status).toBe(422)
    expect(charges).toBe(1)
  })
})

describe('match.caseSensitive in the config file', () => {
  const file = (...routes: string[]): string =>
    `services: { a: { endpoints: [http://127.0.0.1:1] }, b: { endpoints: [http://127.0.0.1:2] } }
listeners:
  - { name: g, role: gateway, port: 9001, routes: [${routes.join(', ')}] }
`

  it('defaults to true and is passed to the route', () => {
    const config = parseProxyConfig(
      file(
        '{ name: pay, match: { prefix: /pay, caseSensitive: false }, targets: [{ service: a }] }',
        '{ name: rest, targets: [{ service: b }] }',
      ),
      'test.yaml',
    )
    const routes = config.listeners[0]?.routes ?? []
    expect(routes.map((r) => r.match.caseSensitive)).toEqual([false, true])
  })

  it('refuses a value that is not a boolean', () => {
    expect(
      problemsOf(
        file(
          '{ name: pay, match: { prefix: /pay, caseSensitive: "no" }, targets: [{ service: a }] }',
        ),
      ),
    ).toContain('listeners[0].routes[0].match.caseSensitive')
  })

  it('refuses a route that a case-insensitive earlier route always takes first', () => {
    const message = problemsOf(
      file(
        '{ name: pay, match: { prefix: /pay, caseSensitive: false }, targets: [{ service: a }] }',
        '{ name: upper, match: { prefix: /PAY/x }, targets: [{ service: b }] }',
        '{ name: mixed, match: { prefix: /Pay, caseSensitive: false }, targets: [{ service: b }] }',
      ),
    )
    expect(message).toContain(
      'listeners[0].routes[1].match: expected a match that listeners[0].routes[0] (pay) does not always take first',
    )
    expect(message).toContain(
      'listeners[0].routes[2].match: expected a match that listeners[0].routes[0] (pay) does not always take first',
    )
  })

  it('keeps a case-insensitive route after a case-sensitive one of the same prefix', () => {
    // The earlier route takes /pay only; the later one still gets /PAY and /Pay.
    const config = parseProxyConfig(
      file(
        '{ name: exact, match: { prefix: /pay }, targets: [{ service: a }] }',
        '{ name: any, match: { prefix: /pay, caseSensitive: false }, targets: [{ service: b }] }',
      ),
      'test.yaml',
    )
    expect(config.listeners[0]?.routes?.map((r) => r.name)).toEqual(['exact', 'any'])
  })
})
