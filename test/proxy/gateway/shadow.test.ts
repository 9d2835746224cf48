// Unit tests of the shadow runner with in-memory services (the integration test drives the
// same runner through the gateway and real upstream servers).

import { describe, expect, it } from 'vitest'
import type { CapturedResponse } from '../../../src/proxy/contracts.js'
import { createShadowRunner, ShadowStats } from '../../../src/proxy/inbound/shadow.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { FakeService, forwardRequest, jsonResponse, shadowConfig } from './fixtures.js'

function deferred<T>(): { promise: Promise<T>; resolve(value: T): void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((r) => {
    resolve = r
  })
  return { promise, resolve }
}

describe('shadow runner', () => {
  it('learns noise from a second primary call and counts only the real mismatch', async () => {
    const clock = new ManualClock(1_000)
    let stamp = 0
    const legacy = new FakeService('legacy', () => jsonResponse({ id: 1, total: 5, at: ++stamp }))
    const fresh = new FakeService('new', (req) =>
      jsonResponse({ id: 1, total: req.target === '/orders/2' ? 6 : 5, at: ++stamp }),
    )
    const runner = createShadowRunner({ clock })
    const stats = new ShadowStats(10)
    const config = shadowConfig('new')
    for (const target of ['/orders/1', '/orders/2', '/orders/1']) {
      const request = forwardRequest({ target })
      expect(
        runner.submit({
          config,
          stats,
          primary: legacy,
          shadow: fresh,
          request,
          response: await legacy.exchange(request, 1e6),
        }),
      ).toBe(true)
      await runner.idle()
    }
    const snapshot = stats.snapshot()
    expect(snapshot).toMatchObject({ compared: 3, mismatches: 1, skipped: 0, errors: 0 })
    expect(snapshot.noise).toEqual(['/at'])
    expect(snapshot.examples).toEqual([
      { at: 1_000, method: 'GET', target: '/orders/2', differences: ['/total: 5 → 6'] },
    ])
    // Two exchanges with the primary per comparison: the answer and the noise probe.
    expect(legacy.exchanges).toHaveLength(6)
    expect(fresh.exchanges).toHaveLength(3)
  })

  it('does not call the primary twice for unsafe methods, and applies configured ignores', async () => {
    const legacy = new FakeService('legacy', () => jsonResponse({ id: 1, at: 1 }))
    const fresh = new FakeService('new', () => jsonResponse({ id: 1, at: 2 }))
    const runner = createShadowRunner()
    const stats = new ShadowStats(10)
    const request = forwardRequest({ method: 'POST', body: Buffer.from('{}') })
    runner.submit({
      config: shadowConfig('new'),
      stats,
      primary: legacy,
      shadow: fresh,
      request,
      response: jsonResponse({ id: 1, at: 1 }),
    })
    runner.submit({
      config: shadowConfig('new', { ignoreFields: ['/at'] }),
      stats,
      primary: legacy,
      shadow: fresh,
      request,
      response: jsonResponse({ id: 1, at: 1 }),
    })
    await runner.idle()
    expect(legacy.exchanges).toHaveLength(0)
    expect(fresh.exchanges).toHaveLength(2)
    expect(fresh.exchanges[0]?.body?.toString()).toBe('{}')
    expect(stats.snapshot()).toMatchObject({ compared: 2, mismatches: 1 })
  })

  it('skips and counts shadow requests beyond the in-flight cap, and never queues them', async () => {
    const held = deferred<CapturedResponse>()
    const fresh = new FakeService('new', () => held.promise)
    const legacy = new FakeService('legacy', () => jsonResponse({ ok: true }))
    const runner = createShadowRunner({ maxInFlight: 2 })
    const stats = new ShadowStats(10)
    const job = {
      config: shadowConfig('new', { learnNoise: false }),
      stats,
      primary: legacy,
      shadow: fresh,
      request: forwardRequest(),
      response: jsonResponse({ ok: true }),
    }
    expect([
      runner.submit(job),
      runner.submit(job),
      runner.submit(job),
      runner.submit(job),
    ]).toEqual([true, true, false, false])
    expect(runner.inFlight).toBe(2)
    expect(stats.skipped).toBe(2)
    held.resolve(jsonResponse({ ok: true }))
    await runner.idle()
    expect(runner.inFlight).toBe(0)
    expect(fresh.exchanges).toHaveLength(2)
    expect(stats.snapshot()).toMatchObject({ compared: 2, mismatches: 0, skipped: 2 })
    expect(runner.submit(job)).toBe(true)
    await runner.idle()
    expect(stats.compared).toBe(3)
  })

  it('counts failed shadow calls as errors and truncated bodies as skipped', async () => {
    const failing = new FakeService('new', () => Promise.reject(new Error('connect ECONNREFUSED')))
    const legacy = new FakeService('legacy', () => jsonResponse({ ok: true }))
    const runner = createShadowRunner()
    const stats = new ShadowStats(10)
    const base = {
      config: shadowConfig('new'),
      stats,
      primary: legacy,
      request: forwardRequest(),
      response: jsonResponse({ ok: true }),
    }
    runner.submit({ ...base, shadow: failing })
    await runner.idle()
    expect(
      runner.submit({ ...base, shadow: legacy, response: { ...base.response, truncated: true } }),
    ).toBe(false)
    const cut = new FakeService('new', () => ({ ...jsonResponse({ ok: true }), truncated: true }))
    runner.submit({ ...base, shadow: cut })
    await runner.idle()
    expect(stats.snapshot()).toMatchObject({ compared: 0, errors: 1, skipped: 2 })
  })

  it('counts a comparison that throws (JSON nested too deep to walk) as an error, never an unhandled rejection', async () => {
    // The app decides what its JSON looks like (a stored document, an echo): 20,000 levels of
    // arrays is 40 KB, well under the capture cap, and deeper than the diff can recurse. The
    // runner promises never to throw for a job's failures; a rejection nobody handles ends
    // the whole proxy process under Node 20.
    const deep = (leaf: number): CapturedResponse => ({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: Buffer.from(`${'['.repeat(20_000)}${leaf}${']'.repeat(20_000)}`),
      truncated: false,
    })
    const unhandled: unknown[] = []
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason)
    }
    process.on('unhandledRejection', onUnhandled)
    try {
      const runner = createShadowRunner()
      const stats = new ShadowStats(10)
      const job = {
        config: shadowConfig('new', { learnNoise: false }),
        stats,
        primary: new FakeService('legacy', () => deep(1)),
        shadow: new FakeService('new', () => deep(2)),
        request: forwardRequest(),
        response: deep(1),
      }
      runner.submit(job)
      // A shadow answer of another kind is one difference at the root, whose preview
      // stringifies the deep primary (JSON.stringify recurses too).
      runner.submit({ ...job, shadow: new FakeService('new', () => jsonResponse({})) })
      await runner.idle()
      await new Promise((resolve) => setImmediate(resolve))
      expect(unhandled).toEqual([])
      expect(runner.inFlight).toBe(0)
      expect(stats.snapshot()).toMatchObject({ compared: 0, errors: 2 })
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
  })

  it('keeps the latest examples only, without credentials, and gives shadow calls their own signal', async () => {
    let n = 0
    const legacy = new FakeService('legacy', () => jsonResponse({ n: 0 }))
    const fresh = new FakeService('new', () =>
      jsonResponse({ n: ++n }, 200, { 'set-cookie': 'sid=secret' }),
    )
    const runner = createShadowRunner()
    const stats = new ShadowStats(2)
    const client = new AbortController()
    client.abort()
    for (let i = 0; i < 5; i++) {
      runner.submit({
        config: shadowConfig('new', { learnNoise: false }),
        stats,
        primary: legacy,
        shadow: fresh,
        request: forwardRequest({
          target: `/orders?token=abc${i}&page=${i}`,
          headers: { authorization: 'Bearer top-secret-token', cookie: 'sid=secret' },
          signal: client.signal,
          deadlineAt: 1,
        }),
        response: jsonResponse({ n: 0 }, 200, { authorization: 'Bearer top-secret-token' }),
      })
      await runner.idle()
    }
    const { examples, mismatches } = stats.snapshot()
    expect(mismatches).toBe(5)
    expect(examples.map((e) => e.differences)).toEqual([
      ['header authorization: [redacted] → [redacted]', '/n: 0 → 4'],
      ['header authorization: [redacted] → [redacted]', '/n: 0 → 5'],
    ])
    const text = JSON.stringify(examples)
    expect(text).not.toContain('secret')
    expect(text).not.toContain('abc')
    expect(examples[1]?.target).toBe('/orders?token=***&page=4')
    for (const sent of fresh.exchanges) {
      expect(sent.signal.aborted).toBe(false)
      expect(sent.deadlineAt).toBeUndefined()
    }
  })
})
