// Shadow traffic never touches the client's answer: a shadow that hangs or resets leaves the
// primary's responses as they are and on time, the shadow gets its own copy of the body, and
// the sample rate is respected. Real upstreams, runtime and listener.

import { afterEach, describe, expect, it } from 'vitest'
import { createRouteTable } from '../../../src/proxy/inbound/routes.js'
import { createShadowRunner } from '../../../src/proxy/inbound/shadow.js'
import { route, seededRandom, shadowConfig } from './fixtures.js'
import { gate, sendJson, startGateway, startUpstream, until } from './harness.js'

const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.()
})

describe('shadow traffic isolation', () => {
  it('a hanging, then resetting shadow changes nothing of the primary answers', async () => {
    const legacy = await startUpstream((req, res) => void sendJson(res, 201, { echo: req.body }))
    cleanups.push(() => legacy.close())
    const held = gate()
    let mode: 'hang' | 'reset' = 'hang'
    const fresh = await startUpstream(async (_req, res) => {
      if (mode === 'reset') {
        res.socket?.destroy()
        return
      }
      await held.promise
      sendJson(res, 500, { broken: true })
    })
    cleanups.push(async () => {
      held.open()
      await fresh.close()
    })
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('new', { learnNoise: false, methods: ['POST'] }),
      }),
    ]
    const table = createRouteTable(routes)
    const shadow = createShadowRunner({ maxInFlight: 2 })
    const gw = await startGateway({ legacy: legacy.url, new: fresh.url }, routes, table, { shadow })
    cleanups.push(() => gw.close())
    for (let i = 0; i < 4; i++) {
      const body = JSON.stringify({ n: i, pad: 'x'.repeat(1000) })
      const response = await fetch(`${gw.url}/orders`, { method: 'POST', body })
      expect(response.status).toBe(201)
      expect(await response.json()).toEqual({ echo: body })
    }
    await until(() => fresh.seen.length === 2, 'two shadow calls held')
    // The shadow got the same bytes, each its own request.
    expect(fresh.seen.map((r) => JSON.parse(r.body).n)).toEqual([0, 1])
    expect(table.state()[0]?.shadow?.skipped).toBe(2)
    mode = 'reset'
    held.open()
    await shadow.idle()
    const body = JSON.stringify({ n: 9 })
    const response = await fetch(`${gw.url}/orders`, { method: 'POST', body })
    expect(await response.json()).toEqual({ echo: body })
    await shadow.idle()
    expect(table.state()[0]?.shadow).toMatchObject({ compared: 2, mismatches: 2, errors: 1 })
    expect(legacy.seen).toHaveLength(5)
  })

  it('shadows about sampleRate of the requests', async () => {
    const legacy = await startUpstream((_req, res) => void sendJson(res, 200, {}))
    const fresh = await startUpstream((_req, res) => void sendJson(res, 200, {}))
    cleanups.push(
      () => legacy.close(),
      () => fresh.close(),
    )
    const routes = [
      route('orders', '/orders', [{ service: 'legacy', weight: 1 }], {
        shadow: shadowConfig('new', { learnNoise: false, sampleRate: 0.25 }),
      }),
    ]
    const table = createRouteTable(routes)
    const shadow = createShadowRunner()
    const gw = await startGateway({ legacy: legacy.url, new: fresh.url }, routes, table, {
      shadow,
      random: seededRandom(7),
    })
    cleanups.push(() => gw.close())
    for (let i = 0; i < 400; i++) await (await fetch(`${gw.url}/orders/${i}`)).arrayBuffer()
    await shadow.idle()
    expect(fresh.seen.length).toBeGreaterThan(60)
    expect(fresh.seen.length).toBeLessThan(140)
    expect(table.state()[0]?.shadow?.compared).toBe(fresh.seen.length)
  })
})
