import { afterEach, describe, expect, it } from 'vitest'
import {
  createDemoClient,
  createFaultyService,
  type DemoClient,
  type FaultyService,
  type RequestInfo,
  ServiceStatusError,
} from '../../src/demo/policies/index.js'
import { classifyFailure, InvalidOptionError } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

let service: FaultyService | undefined
let client: DemoClient | undefined

afterEach(async () => {
  await client?.close()
  await service?.close()
  client = undefined
  service = undefined
})

async function start(): Promise<{ service: FaultyService; client: DemoClient }> {
  service = await createFaultyService()
  client = createDemoClient()
  return { service, client }
}

describe('createFaultyService', () => {
  it('listens on 127.0.0.1 and answers 200 by default', async () => {
    const { service, client } = await start()
    expect(service.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    await expect(client.get(service.url)).resolves.toBe(200)
    expect(service.stats).toMatchObject({ received: 1, ok: 1, errors: 0, resets: 0, hangs: 0 })
  })

  it('answers the scripted status: 503 is transient for the classifier, 500 is not', async () => {
    const { service, client } = await start()
    service.behave(({ index }) => ({ kind: 'respond', status: index === 0 ? 503 : 500 }))
    const first = await client.get(service.url).catch((error: unknown) => error)
    const second = await client.get(service.url).catch((error: unknown) => error)
    expect(first).toBeInstanceOf(ServiceStatusError)
    expect((first as ServiceStatusError).status).toBe(503)
    expect(classifyFailure(first)).toBe('transient')
    expect((second as ServiceStatusError).status).toBe(500)
    expect(classifyFailure(second)).toBe('unknown')
    expect(service.stats).toMatchObject({ received: 2, ok: 0, errors: 2 })
  })

  it('resets the connection: the client sees a transient network error', async () => {
    const { service, client } = await start()
    service.behave(() => ({ kind: 'reset' }))
    const error = await client.get(service.url).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(Error)
    expect(classifyFailure(error)).toBe('transient')
    expect(service.stats).toMatchObject({ received: 1, resets: 1, ok: 0 })
    // The next request gets a fresh connection.
    service.behave(() => ({ kind: 'respond', status: 200 }))
    await expect(client.get(service.url)).resolves.toBe(200)
  })

  it('hangs until the client gives up, and counts the hung request as in flight', async () => {
    const { service, client } = await start()
    const seen: RequestInfo[] = []
    let arrived: () => void = () => {}
    const firstArrived = new Promise<void>((resolve) => {
      arrived = resolve
    })
    service.behave((request) => {
      seen.push(request)
      if (request.index === 0) {
        arrived()
        return { kind: 'hang' }
      }
      return { kind: 'respond', status: 200 }
    })
    const controller = new AbortController()
    const hung = client.get(service.url, controller.signal).catch((e: unknown) => e)
    await firstArrived
    await expect(client.get(service.url)).resolves.toBe(200)
    expect(seen.map((r) => r.inFlight)).toEqual([0, 1])
    controller.abort(new Error('gave up'))
    expect(await hung).toBeInstanceOf(Error)
    expect(service.stats).toMatchObject({ received: 2, hangs: 1, ok: 1 })
  })

  it('closes even while requests hang', async () => {
    const { service, client } = await start()
    let arrived: () => void = () => {}
    const hanging = new Promise<void>((resolve) => {
      arrived = resolve
    })
    service.behave(() => {
      arrived()
      return { kind: 'hang' }
    })
    const call = client.get(service.url).catch((e: unknown) => e)
    await hanging
    await service.close()
    expect(await call).toBeInstanceOf(Error)
  })

  it('records arrival times and forgets them on resetStats', async () => {
    const { service, client } = await start()
    await client.get(service.url)
    await client.get(service.url)
    const { arrivalsMs } = service.stats
    expect(arrivalsMs).toHaveLength(2)
    expect(arrivalsMs[1]!).toBeGreaterThanOrEqual(arrivalsMs[0]!)
    service.resetStats()
    expect(service.stats).toMatchObject({ received: 0, ok: 0, arrivalsMs: [] })
    // The request index keeps counting across resets.
    const indexes: number[] = []
    service.behave(({ index }) => {
      indexes.push(index)
      return { kind: 'respond', status: 200 }
    })
    await client.get(service.url)
    expect(indexes).toEqual([2])
  })

  it('validates its options', async () => {
    await expect(createFaultyService({ behaviour: 5 as never })).rejects.toThrow(InvalidOptionError)
    await expect(createFaultyService({ behaviour: 5 as never })).rejects.toThrow(
      /faultyService\.behaviour/,
    )
  })
})

describe("createFaultyService({ transport: 'memory' })", () => {
  async function memory(clock = new ManualClock(0)) {
    service = await createFaultyService({ transport: 'memory', clock })
    client = createDemoClient()
    return { service, client, clock }
  }

  it('answers through the demo client without sockets, after its delay on the clock', async () => {
    const { service, client, clock } = await memory()
    expect(service.url).toMatch(/^memory:\/\/faulty-\d+$/)
    service.behave(({ index }) => ({
      kind: 'respond',
      status: index === 0 ? 200 : 503,
      delayMs: 50,
    }))
    const first = client.get(service.url)
    const second = client.get(service.url).catch((e: unknown) => e)
    let answered = false
    void first.then(() => {
      answered = true
    })
    await clock.advance(49)
    expect(answered).toBe(false)
    await clock.advance(1)
    await expect(first).resolves.toBe(200)
    const error = await second
    expect((error as ServiceStatusError).status).toBe(503)
    expect(classifyFailure(error)).toBe('transient')
    expect(service.stats).toMatchObject({ received: 2, ok: 1, errors: 1 })
  })

  it('resets as a transient network error, and counts a hung call in flight until the caller gives up', async () => {
    const { service, client } = await memory()
    const seen: RequestInfo[] = []
    service.behave((request) => {
      seen.push(request)
      return request.index === 0 ? { kind: 'reset' } : { kind: 'hang' }
    })
    const reset = await client.get(service.url).catch((e: unknown) => e)
    expect(classifyFailure(reset)).toBe('transient')
    const controller = new AbortController()
    const hung = client.get(service.url, controller.signal).catch((e: unknown) => e)
    const next = client.get(service.url, controller.signal).catch((e: unknown) => e)
    expect(seen.map((r) => r.inFlight)).toEqual([0, 0, 1])
    const reason = new Error('gave up')
    controller.abort(reason)
    expect(await hung).toBe(reason)
    expect(await next).toBe(reason)
    // A signal already aborted sends nothing, as over HTTP.
    expect(await client.get(service.url, controller.signal).catch((e: unknown) => e)).toBe(reason)
    expect(service.stats).toMatchObject({ received: 3, resets: 1, hangs: 2 })
  })

  it('does not count an answer the caller gave up on, and fails open calls when it closes', async () => {
    const { service, client, clock } = await memory()
    service.behave(({ index }) =>
      index === 0 ? { kind: 'respond', status: 200, delayMs: 100 } : { kind: 'hang' },
    )
    const controller = new AbortController()
    const abandoned = client.get(service.url, controller.signal).catch((e: unknown) => e)
    controller.abort(new Error('timeout'))
    await abandoned
    await clock.advance(100)
    expect(service.stats.ok).toBe(0)
    const hanging = client.get(service.url).catch((e: unknown) => e)
    await service.close()
    expect(classifyFailure(await hanging)).toBe('transient')
    // Closed: its URL is no longer an in-memory service, and the call goes to undici (which
    // refuses the memory: scheme).
    await expect(client.get(service.url)).rejects.toThrow()
  })

  it('refuses an unknown transport, naming the option', async () => {
    await expect(
      createFaultyService({ transport: 'carrier-pigeon' as unknown as 'memory' }),
    ).rejects.toThrow(/faultyService\.transport/)
  })
})
