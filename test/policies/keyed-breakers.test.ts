import { describe, expect, it } from 'vitest'
import {
  type CircuitBreaker,
  circuitBreaker,
  createKeyedBreakers,
  InvalidOptionError,
  type KeyedBreakersOptions,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

function setup(options: Omit<KeyedBreakersOptions, 'create' | 'clock'> = {}) {
  const clock = new ManualClock()
  const created: string[] = []
  const breakers = createKeyedBreakers({
    ...options,
    clock,
    create: (key) => {
      created.push(key)
      return circuitBreaker({
        window: { kind: 'consecutive', failures: 1 },
        cooldownMs: 5_000,
        clock,
      })
    },
  })
  return { clock, breakers, created }
}

async function trip(breaker: CircuitBreaker): Promise<void> {
  await breaker.execute(() => Promise.reject(new Error('down'))).catch(() => undefined)
  expect(breaker.state).toBe('open')
}

describe('createKeyedBreakers', () => {
  it('creates one breaker per key, once', () => {
    const { breakers, created } = setup()
    const a = breakers.get('a')
    expect(breakers.get('a')).toBe(a)
    expect(breakers.get('b')).not.toBe(a)
    expect(created).toEqual(['a', 'b'])
    expect(breakers.size).toBe(2)
  })

  it('keeps a failing key from opening the circuit of the others', async () => {
    const { breakers } = setup()
    await trip(breakers.get('10.0.0.1'))
    await expect(breakers.get('10.0.0.2').execute(() => 'ok')).resolves.toBe('ok')
    expect(breakers.get('10.0.0.1').state).toBe('open')
  })

  it('is bounded by maxKeys, dropping the least recently used breaker', () => {
    const { breakers, created } = setup({ maxKeys: 3 })
    breakers.get('a')
    breakers.get('b')
    breakers.get('c')
    breakers.get('a') // a is now the most recently used
    breakers.get('d')
    expect(breakers.size).toBe(3)
    breakers.get('a')
    breakers.get('c')
    breakers.get('d')
    expect(created).toEqual(['a', 'b', 'c', 'd'])
    breakers.get('b') // b was dropped: a new breaker
    expect(created).toEqual(['a', 'b', 'c', 'd', 'b'])
    expect(breakers.size).toBe(3)
  })

  it('keeps open breakers over closed ones, but never more than maxKeys', async () => {
    const { breakers, created } = setup({ maxKeys: 2 })
    const a = breakers.get('a')
    await trip(a)
    breakers.get('b')
    breakers.get('c') // over the bound: b (closed) goes, a (open, older) stays
    expect(breakers.get('a')).toBe(a)
    expect(created).toEqual(['a', 'b', 'c'])
    await trip(breakers.get('c'))
    // Both others are open: the least recently used of them (a) goes, and the bound holds
    // (it used to grow to 3 and stay there until the open breakers closed and went idle).
    const d = breakers.get('d')
    expect(breakers.size).toBe(2)
    expect(breakers.get('c').state).toBe('open')
    expect(breakers.get('d')).toBe(d)
    expect(created).toEqual(['a', 'b', 'c', 'd'])
    expect(breakers.get('a')).not.toBe(a) // a starts again, closed
    expect(breakers.size).toBe(2)
    expect(created).toEqual(['a', 'b', 'c', 'd', 'a'])
  })

  it('drops an isolated breaker only when every other kept one is isolated too', async () => {
    const { breakers, created } = setup({ maxKeys: 2 })
    const isolated = breakers.get('isolated')
    isolated.isolate()
    await trip(breakers.get('open'))
    breakers.get('new') // the open one goes although the isolated one is older
    expect(breakers.size).toBe(2)
    expect(breakers.get('isolated')).toBe(isolated)
    breakers.get('new').isolate()
    breakers.get('isolated') // now 'new' is the least recently used
    breakers.get('newer') // only isolated ones left: the least recently used goes
    expect(breakers.size).toBe(2)
    expect(breakers.get('isolated')).toBe(isolated)
    expect(created).toEqual(['isolated', 'open', 'new', 'newer'])
    expect(breakers.get('new').state).toBe('closed') // created again
    expect(created).toEqual(['isolated', 'open', 'new', 'newer', 'new'])
  })

  it('drops closed breakers idle for idleMs and keeps open ones until they close', async () => {
    const { clock, breakers, created } = setup({ idleMs: 60_000 })
    const open = breakers.get('open')
    await trip(open)
    breakers.get('idle')
    await clock.advance(59_999)
    breakers.get('fresh')
    expect(breakers.size).toBe(3)
    await clock.advance(1)
    breakers.get('fresh')
    expect(breakers.size).toBe(2) // idle went; open stays (it is half-open by now)
    expect(breakers.get('open')).toBe(open)
    await open.execute(() => 'probe')
    expect(open.state).toBe('closed')
    await clock.advance(60_000)
    breakers.get('fresh')
    expect(breakers.size).toBe(1)
    breakers.get('idle')
    breakers.get('open')
    expect(created).toEqual(['open', 'idle', 'fresh', 'idle', 'open'])
  })

  it('delete() and close() dispose the breakers, clearing their timers', async () => {
    const { clock, breakers } = setup()
    await trip(breakers.get('a'))
    await trip(breakers.get('b'))
    expect(clock.pendingTimers).toBe(2)
    expect(breakers.delete('a')).toBe(true)
    expect(breakers.delete('a')).toBe(false)
    expect(clock.pendingTimers).toBe(1)
    breakers.close()
    expect(clock.pendingTimers).toBe(0)
    expect(breakers.size).toBe(0)
  })

  const bad: Array<[string, unknown]> = [
    ['keyedBreakers.create', {}],
    ['keyedBreakers.maxKeys', { create: () => circuitBreaker(), maxKeys: 0 }],
    ['keyedBreakers.idleMs', { create: () => circuitBreaker(), idleMs: 0 }],
    ['keyedBreakers.clock', { create: () => circuitBreaker(), clock: 1 }],
  ]
  it.each(bad)('rejects a bad %s with InvalidOptionError naming it', (option, options) => {
    let error: unknown
    try {
      createKeyedBreakers(options as KeyedBreakersOptions)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect((error as InvalidOptionError).option).toBe(option)
  })

  it('rejects a create() that does not return a breaker', () => {
    const breakers = createKeyedBreakers({ create: () => undefined as unknown as CircuitBreaker })
    expect(() => breakers.get('x')).toThrow(InvalidOptionError)
  })

  it('refuses an async create(), its promise observed', () => {
    // get() is synchronous: the promise was refused as not a breaker, but one that rejected
    // was left unhandled, which ends a Node process, and the message did not say why.
    const breakers = createKeyedBreakers({
      create: (async () => {
        throw new Error('no breaker')
      }) as unknown as KeyedBreakersOptions['create'],
    })
    expect(() => breakers.get('x')).toThrow(
      expect.objectContaining({
        code: 'INVALID_OPTION',
        option: 'keyedBreakers.create',
        expected: expect.stringContaining('not a promise'),
      }),
    )
    expect(breakers.size).toBe(0)
  })

  it('rejects a create() returning a plain policy, which it could never dispose nor drop', () => {
    // Accepted, a policy without state and dispose() was never dropped as closed (the set grew
    // past maxKeys for good) and made delete() and close() throw a TypeError.
    const breakers = createKeyedBreakers({
      create: () => ({ execute: async () => 'x' }) as unknown as CircuitBreaker,
    })
    expect(() => breakers.get('x')).toThrow(InvalidOptionError)
    expect(breakers.size).toBe(0)
  })

  it('refuses a key that is not a string, in get() and delete()', () => {
    // Accepted, any key went into the map: an object key is compared by identity, so a key
    // object built per request made a fresh breaker per call that never tripped, and the set
    // grew past maxKeys with them; undefined, numbers and symbols were keys of their own.
    let created = 0
    const breakers = createKeyedBreakers({
      create: () => {
        created++
        return circuitBreaker()
      },
    })
    for (const key of [undefined, null, 42, { host: 'a' }, ['x'], Symbol('s')]) {
      for (const [method, call] of [
        ['get', () => breakers.get(key as unknown as string)],
        ['delete', () => breakers.delete(key as unknown as string)],
      ] as const) {
        let error: unknown
        try {
          call()
        } catch (caught) {
          error = caught
        }
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect(error).toMatchObject({
          code: 'INVALID_OPTION',
          option: `keyedBreakers.${method}(key)`,
          expected: 'a string',
        })
      }
    }
    expect(() => breakers.get(undefined as unknown as string)).toThrow(
      'keyedBreakers.get(key): expected a string, got undefined',
    )
    expect(created).toBe(0)
    expect(breakers.size).toBe(0)
    expect(breakers.get('')).toBe(breakers.get(''))
    breakers.close()
  })
})
