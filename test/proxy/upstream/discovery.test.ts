import { createSocket } from 'node:dgram'
import { Resolver } from 'node:dns/promises'
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import type { DiscoveryConfig } from '../../../src/proxy/contracts.js'
import {
  createServiceRuntime,
  parseEndpointFile,
  parseEndpointUrl,
} from '../../../src/proxy/upstream/index.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js'
import { type FaultyUpstream, startFaultyUpstream } from '../support/faulty-upstream.js'
import { eventually, forwardRequest, serviceConfig, testDeps } from './helpers.js'

const cleanups: Array<() => Promise<unknown> | unknown> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

async function dns(): Promise<TestDnsServer> {
  const server = await startDnsServer()
  cleanups.push(() => server.close())
  return server
}

/** A DNS server that takes every query and never answers (a blackholed resolver). */
async function silentDns(): Promise<{ readonly address: string; readonly queried: Promise<void> }> {
  const silent = createSocket('udp4')
  await new Promise<void>((resolve) => silent.bind(0, '127.0.0.1', resolve))
  cleanups.push(() => new Promise<void>((resolve) => silent.close(() => resolve())))
  const queried = new Promise<void>((resolve) => silent.once('message', () => resolve()))
  return { address: `127.0.0.1:${silent.address().port}`, queried }
}

type DnsDiscovery = Extract<DiscoveryConfig, { kind: 'dns' }>

/** DNS discovery of A records for orders.test on port 8080, with `overrides`. */
function dnsDiscovery(overrides: Partial<DnsDiscovery> = {}): DnsDiscovery {
  return {
    kind: 'dns',
    name: 'orders.test',
    recordType: 'A',
    port: 8080,
    scheme: 'http',
    minRefreshMs: 1_000,
    maxRefreshMs: 60_000,
    ...overrides,
  }
}

/** A resolver that asks only `server` (the programmatic path: no servers in the config). */
function resolverOf(
  server: TestDnsServer,
  options?: ConstructorParameters<typeof Resolver>[0],
): Resolver {
  const resolver = new Resolver(options)
  resolver.setServers([server.address])
  return resolver
}

/** A service discovering through `resolver` on `clock`, closed after the test. */
function dnsService(discovery: DnsDiscovery, clock: ManualClock, resolver: Resolver) {
  const service = createServiceRuntime(serviceConfig([], { discovery }), testDeps(clock), {
    dnsResolver: resolver,
  })
  cleanups.push(() => service.close())
  return service
}

/** Two upstreams on 127.0.0.1, closed after the test. */
async function twoUpstreams(): Promise<[FaultyUpstream, FaultyUpstream]> {
  const a = await startFaultyUpstream()
  const b = await startFaultyUpstream()
  cleanups.push(
    () => a.close(),
    () => b.close(),
  )
  return [a, b]
}

function endpointsOf(service: { state(): { endpoints: readonly { url: string }[] } }): string[] {
  return service.state().endpoints.map((e) => e.url)
}

describe('DNS discovery', () => {
  it('resolves A records, re-resolves when the TTL runs out on the clock, and follows the change', async () => {
    const first = await startFaultyUpstream({ host: '127.0.0.1' })
    const second = await startFaultyUpstream({ host: '127.0.0.2', port: first.port })
    cleanups.push(
      () => first.close(),
      () => second.close(),
    )
    const server = await dns()
    server.set('orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 5 }])
    const clock = new ManualClock(0)
    // The YAML path: servers in the discovery config.
    const discovery = dnsDiscovery({ port: first.port, servers: [server.address] })
    const service = createServiceRuntime(serviceConfig([], { discovery }), testDeps(clock))
    cleanups.push(() => service.close())
    await service.ready()
    expect(endpointsOf(service)).toEqual([`http://127.0.0.1:${first.port}`])
    expect((await service.exchange(forwardRequest(), 100)).status).toBe(200)
    expect(first.requests).toHaveLength(1)
    // rewriteHost: the name that was resolved, as TLS SNI has it, not the address.
    expect(first.requests[0]?.headers.host).toBe(`orders.test:${first.port}`)

    server.set('orders.test', 'A', [{ type: 'A', address: '127.0.0.2', ttl: 5 }])
    const asked = server.queries.length
    await clock.advance(4_999)
    expect(server.queries.length).toBe(asked)
    await clock.advance(1)
    await eventually(() => endpointsOf(service)[0] === `http://127.0.0.2:${first.port}`)
    expect((await service.exchange(forwardRequest(), 100)).status).toBe(200)
    expect(second.requests).toHaveLength(1)
  })

  it('answers a request waiting for the first DNS answer at its deadline, not when DNS gives up', async () => {
    const silent = await silentDns()
    const clock = new ManualClock(0)
    const discovery = dnsDiscovery({ port: 80, servers: [silent.address] })
    const service = createServiceRuntime(
      serviceConfig([], { discovery, timeouts: { connectMs: 100, readMs: 100, overallMs: 500 } }),
      testDeps(clock),
    )
    cleanups.push(() => service.close())
    await silent.queried
    let outcome: unknown
    const call = service.exchange(forwardRequest(), 100).then(
      () => 'answered',
      (error: { code?: string }) => error.code,
    )
    void call.then((value) => {
      outcome = value
    })
    await clock.advance(499)
    expect(outcome).toBeUndefined()
    await clock.advance(1)
    expect(await call).toBe('DEADLINE_EXCEEDED')
  })

  it('close() cancels a DNS lookup under way: nothing is left waiting on a silent resolver', async () => {
    // A lookup the resolver never answers holds the process open for the resolver's whole
    // timeout and retries (over a minute by default): a proxy closed meanwhile kept its process
    // alive that long. Its own resolver's lookups are cancelled at close, so ready() settles.
    const silent = await silentDns()
    const service = createServiceRuntime(
      serviceConfig([], { discovery: dnsDiscovery({ port: 80, servers: [silent.address] }) }),
      testDeps(new ManualClock(0)),
    )
    await silent.queried
    await service.close()
    await service.ready()
    expect(service.state().endpoints).toEqual([])
  })

  it('before its first answer, tries again after minRefreshMs, doubling up to maxRefreshMs, not after maxRefreshMs', async () => {
    // With no endpoint yet every request is refused 503 UPSTREAM_NO_ENDPOINTS: a lookup that
    // failed at start (DNS not ready yet as the pod starts) left the service with none for a
    // whole maxRefreshMs.
    const server = await dns()
    server.failing = true
    const clock = new ManualClock(0)
    const service = dnsService(
      dnsDiscovery({ maxRefreshMs: 30_000 }),
      clock,
      resolverOf(server, { timeout: 200, tries: 1 }),
    )
    await service.ready()
    expect(endpointsOf(service)).toEqual([])
    expect(clock.nextTimerAt()).toBe(1_000)
    const asked = server.queries.length
    await clock.advance(1_000)
    await eventually(() => server.queries.length > asked)
    await eventually(() => clock.nextTimerAt() === 1_000 + 2_000)
    server.failing = false
    server.set('orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 60 }])
    await clock.advance(2_000)
    await eventually(() => endpointsOf(service)[0] === 'http://127.0.0.1:8080')
  })

  it('clamps the TTL to minRefreshMs and keeps the last answer while lookups fail', async () => {
    const server = await dns()
    server.set('orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 0 }])
    const clock = new ManualClock(0)
    const service = dnsService(
      dnsDiscovery({ minRefreshMs: 2_000, maxRefreshMs: 30_000 }),
      clock,
      resolverOf(server, { timeout: 200, tries: 1 }),
    )
    await service.ready()
    const asked = server.queries.length
    await clock.advance(1_999)
    expect(server.queries.length).toBe(asked)
    server.failing = true
    await clock.advance(1)
    await eventually(() => server.queries.length > asked)
    // The failure is logged and the endpoints stay; the next try comes after maxRefreshMs.
    await eventually(() => clock.nextTimerAt() === 2_000 + 30_000)
    expect(endpointsOf(service)).toEqual(['http://127.0.0.1:8080'])
    server.failing = false
    server.set('orders.test', 'A', [{ type: 'A', address: '127.0.0.3', ttl: 60 }])
    await clock.advance(30_000)
    await eventually(() => endpointsOf(service)[0] === 'http://127.0.0.3:8080')
  })

  it('resolves SRV records to their targets addresses and ports, TLS name from the target', async () => {
    const [a, b] = await twoUpstreams()
    const server = await dns()
    server.set('_http._tcp.orders.test', 'SRV', [
      { type: 'SRV', target: 'a.orders.test', port: a.port, ttl: 30 },
      { type: 'SRV', target: 'b.orders.test', port: b.port, ttl: 30 },
    ])
    server.set('a.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 10 }])
    server.set('b.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 20 }])
    const clock = new ManualClock(0)
    const service = dnsService(
      dnsDiscovery({ name: '_http._tcp.orders.test', recordType: 'SRV', port: undefined }),
      clock,
      resolverOf(server),
    )
    await service.ready()
    expect(endpointsOf(service).sort()).toEqual(
      [`http://127.0.0.1:${a.port}`, `http://127.0.0.1:${b.port}`].sort(),
    )
    await service.exchange(forwardRequest(), 10)
    await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, b.requests.length]).toEqual([1, 1])
    expect([a.requests[0]?.headers.host, b.requests[0]?.headers.host]).toEqual([
      `a.orders.test:${a.port}`,
      `b.orders.test:${b.port}`,
    ])
    // The shortest address TTL (10 s) decides the next lookup.
    expect(clock.nextTimerAt()).toBe(10_000)
  })

  /** SRV records of priority 10 for a.orders.test and b.orders.test with weights wa and wb. */
  function setSrv(
    server: TestDnsServer,
    [a, b]: readonly FaultyUpstream[],
    wa: number,
    wb: number,
  ) {
    server.set('_http._tcp.orders.test', 'SRV', [
      {
        type: 'SRV',
        target: 'a.orders.test',
        port: a?.port ?? 0,
        priority: 10,
        weight: wa,
        ttl: 30,
      },
      {
        type: 'SRV',
        target: 'b.orders.test',
        port: b?.port ?? 0,
        priority: 10,
        weight: wb,
        ttl: 30,
      },
    ])
  }

  /** A round-robin service discovering _http._tcp.orders.test through `server`, ready. */
  async function srvService(server: TestDnsServer) {
    const clock = new ManualClock(0)
    const discovery = dnsDiscovery({
      name: '_http._tcp.orders.test',
      recordType: 'SRV',
      port: undefined,
    })
    const service = dnsService(discovery, clock, resolverOf(server))
    await service.ready()
    return { clock, service }
  }

  it('shares the load of one SRV priority by weight; a target of weight 0 gets none', async () => {
    const [a, b] = await twoUpstreams()
    const server = await dns()
    setSrv(server, [a, b], 3, 1)
    server.set('a.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 30 }])
    server.set('b.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 30 }])
    const { clock, service } = await srvService(server)
    for (let i = 0; i < 8; i++) await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, b.requests.length]).toEqual([6, 2])
    setSrv(server, [a, b], 0, 5)
    await clock.advance(30_000)
    await eventually(() => clock.nextTimerAt() === 60_000)
    for (let i = 0; i < 4; i++) await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, b.requests.length]).toEqual([6, 6])
  })

  it('splits an SRV weight among the addresses of its target', async () => {
    const [a, b] = await twoUpstreams()
    // a.orders.test has two addresses (the same port on 127.0.0.2): together they get a's
    // weight, as much as b, not twice as much.
    const a2 = await startFaultyUpstream({ host: '127.0.0.2', port: a.port })
    cleanups.push(() => a2.close())
    const server = await dns()
    setSrv(server, [a, b], 2, 2)
    server.set('a.orders.test', 'A', [
      { type: 'A', address: '127.0.0.1', ttl: 30 },
      { type: 'A', address: '127.0.0.2', ttl: 30 },
    ])
    server.set('b.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 30 }])
    const { service } = await srvService(server)
    for (let i = 0; i < 8; i++) await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, a2.requests.length, b.requests.length]).toEqual([2, 2, 4])
  })

  it('uses the lowest SRV priority only, and a higher one while every lower endpoint is ejected', async () => {
    const [a, b] = await twoUpstreams()
    const server = await dns()
    server.set('_http._tcp.orders.test', 'SRV', [
      { type: 'SRV', target: 'b.orders.test', port: b.port, priority: 20, weight: 100, ttl: 30 },
      { type: 'SRV', target: 'a.orders.test', port: a.port, priority: 10, weight: 1, ttl: 30 },
    ])
    server.set('a.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 30 }])
    server.set('b.orders.test', 'A', [{ type: 'A', address: '127.0.0.1', ttl: 30 }])
    const clock = new ManualClock(0)
    const service = createServiceRuntime(
      serviceConfig([], {
        discovery: dnsDiscovery({
          name: '_http._tcp.orders.test',
          recordType: 'SRV',
          port: undefined,
        }),
        retry: undefined,
        outlierEjection: { consecutiveFailures: 1, baseEjectionMs: 10_000, maxEjectedPercent: 100 },
      }),
      testDeps(clock),
      { dnsResolver: resolverOf(server) },
    )
    cleanups.push(() => service.close())
    await service.ready()
    for (let i = 0; i < 4; i++) await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, b.requests.length]).toEqual([4, 0])
    // The primary fails and is ejected: the backup takes over until it returns.
    a.fallback = { kind: 'respond', status: 503 }
    expect((await service.exchange(forwardRequest(), 10)).status).toBe(503)
    a.fallback = { kind: 'respond' }
    for (let i = 0; i < 2; i++) await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, b.requests.length]).toEqual([5, 2])
    await clock.advance(10_000)
    await service.exchange(forwardRequest(), 10)
    expect([a.requests.length, b.requests.length]).toEqual([6, 2])
  })
})

/** A temporary folder holding a discovery file with `content`, removed after the test. */
function discoveryFile(content: string): { dir: string; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-discovery-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'orders.txt')
  writeFileSync(file, content)
  return { dir, file }
}

/** A service discovering from `file` on `clock`, closed after the test. */
function fileService(file: string, clock: ManualClock, deps = testDeps(clock)) {
  const service = createServiceRuntime(
    serviceConfig([], { discovery: { kind: 'file', path: file } }),
    deps,
  )
  cleanups.push(() => service.close())
  return service
}

/**
 * Lets a file change reach the discovery: waits (real time) for its debounce timer, moves the
 * clock past it, then waits for `done`.
 */
async function settle(clock: ManualClock, done: () => boolean): Promise<void> {
  await eventually(() => clock.nextTimerAt() === clock.now() + 250)
  await clock.advance(250)
  await eventually(done)
}

describe('file discovery', () => {
  it('reads the endpoint file and follows its changes, keeping the list on a bad file', async () => {
    const a = await startFaultyUpstream()
    const b = await startFaultyUpstream()
    cleanups.push(
      () => a.close(),
      () => b.close(),
    )
    const { dir, file } = discoveryFile(`# orders\n${a.url}\n`)
    const clock = new ManualClock(1_000_000)
    const deps = testDeps(clock)
    const service = fileService(file, clock, deps)
    expect(endpointsOf(service)).toEqual([a.url])
    // Replaced by rename, as editors and secret mounts do.
    writeFileSync(join(dir, 'next.tmp'), JSON.stringify([b.url]))
    renameSync(join(dir, 'next.tmp'), file)
    await settle(clock, () => endpointsOf(service)[0] === b.url)
    expect((await service.exchange(forwardRequest(), 100)).status).toBe(200)
    expect(b.requests).toHaveLength(1)
    writeFileSync(file, '[not json')
    await settle(clock, () => deps.logs.some((line) => line.includes('discovery file unreadable')))
    expect(endpointsOf(service)).toEqual([b.url])
    writeFileSync(file, `- ${a.url}\n- ${b.url}\n`)
    await settle(clock, () => endpointsOf(service).length === 2)
  })

  it('reads a change once it settles (250 ms on the clock), not at the first event of a write', async () => {
    const a = await startFaultyUpstream()
    cleanups.push(() => a.close())
    const { file } = discoveryFile(`${a.url}\n`)
    const clock = new ManualClock(1_000_000)
    const service = fileService(file, clock)
    expect(endpointsOf(service)).toEqual([a.url])
    // A writer midway: one line of the two it will write.
    writeFileSync(file, 'http://127.0.0.1:1\n')
    await eventually(() => clock.nextTimerAt() === clock.now() + 250)
    expect(endpointsOf(service)).toEqual([a.url])
    writeFileSync(file, `http://127.0.0.1:1\n${a.url}\n`)
    await clock.advance(250)
    await eventually(() => endpointsOf(service).length === 2)
    expect(endpointsOf(service)).toEqual(['http://127.0.0.1:1', a.url])
  })

  it('keeps its endpoints when the file reads empty (rewritten in place), and empties only when it stays so', async () => {
    const a = await startFaultyUpstream()
    cleanups.push(() => a.close())
    const { file } = discoveryFile(`${a.url}\n`)
    const clock = new ManualClock(1_000_000)
    const deps = testDeps(clock)
    const service = fileService(file, clock, deps)
    const emptied = () => deps.logs.filter((line) => line.includes('lists no endpoints')).length
    // Truncated, as writeFileSync does before it writes: read empty, then written again.
    writeFileSync(file, '')
    await settle(clock, () => emptied() === 1)
    expect(endpointsOf(service)).toEqual([a.url])
    const updates = () => deps.logs.filter((line) => line.includes('endpoints updated')).length
    expect(updates()).toBe(1)
    writeFileSync(file, `${a.url}\n`)
    await settle(clock, () => updates() === 2)
    // The pending check of the empty read is dropped: the file lists an endpoint again.
    await clock.advance(5_000)
    expect(endpointsOf(service)).toEqual([a.url])
    // Meant: still empty (comments only) a second after it was read so.
    writeFileSync(file, '# orders are drained\n')
    await settle(clock, () => emptied() === 2)
    expect(endpointsOf(service)).toEqual([a.url])
    await clock.advance(1_000)
    await eventually(() => endpointsOf(service).length === 0)
    expect((await service.exchange(forwardRequest(), 100).catch((e) => e)).code).toBe(
      'UPSTREAM_NO_ENDPOINTS',
    )
  })

  it('parses the three file formats and validates endpoint URLs', () => {
    expect(parseEndpointFile('http://a:1\n# c\n\nhttp://b:2 # tail\n')).toEqual([
      'http://a:1',
      'http://b:2',
    ])
    expect(parseEndpointFile('["http://a:1"]')).toEqual(['http://a:1'])
    expect(parseEndpointFile('- http://a:1\n- https://b:2\n')).toEqual([
      'http://a:1',
      'https://b:2',
    ])
    expect(parseEndpointUrl('x', 'https://Orders.Example:443/')).toBe('https://orders.example')
    for (const bad of [
      'ftp://a',
      'http://u:p@a',
      'http://a/path',
      'http://a?q',
      'nope',
      'http://a:0',
    ])
      expect(() => parseEndpointUrl('services.orders.endpoints[0]', bad)).toThrow(
        /services\.orders\.endpoints\[0\]/,
      )
  })
})
