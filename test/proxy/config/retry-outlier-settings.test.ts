// retry.retryOnStatus takes only statuses worth retrying (408, 425, 429 and 5xx), and outlier
// ejection has a cap on how long one ejection lasts (maxEjectionMs, Envoy's max_ejection_time).
import { describe, expect, it } from 'vitest'
import { ConfigInvalidError, parseProxyConfig } from '../../../src/proxy/config/index.js'
import { type Endpoint, EndpointSet } from '../../../src/proxy/upstream/endpoints.js'
import { ManualClock } from '../../../src/testing/manual-clock.js'

const file = (service: string): string =>
  `services:\n  a: { endpoints: [http://127.0.0.1:3001], ${service} }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`

function problems(text: string): string[] {
  try {
    parseProxyConfig(text, 'test.yaml')
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigInvalidError)
    return (error as ConfigInvalidError).problems.map((p) => `${p.path}: ${p.message}`)
  }
  return []
}

describe('retry.retryOnStatus', () => {
  it.each([100, 200, 204, 301, 304, 400, 404, 409])('refuses %i, naming the setting', (status) => {
    const found = problems(file(`retry: { retryOnStatus: [503, ${status}] }`))
    expect(found).toHaveLength(1)
    expect(found[0]).toMatch(/^services\.a\.retry\.retryOnStatus\[1\]: expected /)
    expect(found[0]).toContain(`got ${status}`)
  })

  it('takes 408, 425, 429 and any 5xx', () => {
    const config = parseProxyConfig(
      file('retry: { retryOnStatus: [408, 425, 429, 500, 502, 599] }'),
      'test.yaml',
    )
    expect(config.services.get('a')?.retry?.retryOnStatus).toEqual([408, 425, 429, 500, 502, 599])
  })
})

describe('outlierEjection.maxEjectionMs', () => {
  const outlier = (text: string) =>
    parseProxyConfig(file(`outlierEjection: { ${text} }`), 'test.yaml').services.get('a')
      ?.outlierEjection

  it('defaults to 300000, or to baseEjectionMs when that is longer', () => {
    expect(outlier('consecutiveFailures: 2')?.maxEjectionMs).toBe(300_000)
    expect(outlier('baseEjectionMs: 600000')?.maxEjectionMs).toBe(600_000)
    expect(outlier('baseEjectionMs: 1000, maxEjectionMs: 5000')?.maxEjectionMs).toBe(5_000)
  })

  it('refuses a cap below baseEjectionMs, and a bad value, naming the setting', () => {
    expect(
      problems(file('outlierEjection: { baseEjectionMs: 10000, maxEjectionMs: 5000 }')),
    ).toEqual([
      'services.a.outlierEjection.maxEjectionMs: expected at least baseEjectionMs (10000), got 5000',
    ])
    const bad = problems(file('outlierEjection: { maxEjectionMs: 0 }'))
    expect(bad).toHaveLength(1)
    expect(bad[0]).toMatch(
      /^services\.a\.outlierEjection\.maxEjectionMs: expected integer in \[1, /,
    )
  })

  it('caps the nth ejection of an endpoint at maxEjectionMs', async () => {
    const clock = new ManualClock(0)
    const durations: number[] = []
    const set = new EndpointSet({
      loadBalancer: 'round-robin',
      outlierEjection: {
        consecutiveFailures: 1,
        baseEjectionMs: 1_000,
        maxEjectionMs: 2_500,
        maxEjectedPercent: 100,
      },
      clock,
      random: Math.random,
      open: () => {},
      retire: () => {},
      onEject: (_endpoint, ms) => durations.push(ms),
    })
    set.replace([{ url: 'http://10.0.0.1:80', servername: undefined }])
    const endpoint = set.all[0] as Endpoint
    for (let i = 0; i < 4; i++) {
      set.failure(endpoint)
      expect(endpoint.ejectedUntil).toBe(clock.now() + (durations.at(-1) as number))
      await clock.advance(durations.at(-1) as number)
      expect(endpoint.ejectedUntil).toBeUndefined()
    }
    expect(durations).toEqual([1_000, 2_000, 2_500, 2_500])
  })
})

// `retry:` with nothing after it, and `retry: ~`, are YAML's null. Read as "the defaults" it
// would turn retries on, read as "left out" it would turn them off: the two readings are
// opposite, so null stays refused, as for every section of the file, and the refusal says what
// to write for each.
describe('a section given as null', () => {
  it.each(['retry: null', 'retry: ~', 'circuitBreaker: null', 'outlierEjection: ~'])(
    '%s is refused, saying how to turn it off and how to take its defaults',
    (setting) => {
      const key = setting.split(':')[0] as string
      expect(problems(file(setting))).toEqual([
        `services.a.${key}: expected a mapping, got null (an empty value): leave ${key} out or write "${key}: false" to go without it, or write "${key}: {}" for its defaults`,
      ])
    },
  )

  it('a section on by default says that leaving it out keeps its defaults', () => {
    expect(problems(file('timeouts: ~'))).toEqual([
      'services.a.timeouts: expected a mapping, got null (an empty value): leave timeouts out for its defaults, or give its settings',
    ])
  })

  it('an empty key reads as null too', () => {
    const text = `services:\n  a:\n    endpoints: [http://127.0.0.1:3001]\n    retry:\nlisteners: [{ name: out, role: ambassador, port: 0 }]\n`
    expect(problems(text)[0]).toMatch(
      /^services\.a\.retry: expected a mapping, got null \(an empty value\): leave retry out or write "retry: false" to go without it/,
    )
  })
})

const listeners = 'listeners: [{ name: out, role: ambassador, port: 0 }]\n'

// A service that takes shared settings by a merge key (`<<: *defaults`) could not turn off a
// policy those settings turn on: `retry: null` is refused (null reads as "off" to some and as
// "the defaults" to others), so the only way was to write the service out without the merge
// key. `retry: false` (and `circuitBreaker: false`, `outlierEjection: false`) says "off" and
// nothing else.
describe('turning off a section merged in from shared settings', () => {
  it('retry: false, circuitBreaker: false and outlierEjection: false turn them off', () => {
    const config = parseProxyConfig(
      `x-defaults: &defaults
  retry: { attempts: 5 }
  circuitBreaker: { failureThreshold: 3 }
  outlierEjection: { consecutiveFailures: 2 }
  loadBalancer: least-request
services:
  orders: { <<: *defaults, endpoints: [http://127.0.0.1:3001] }
  reports:
    <<: *defaults
    endpoints: [http://127.0.0.1:3002]
    retry: false
    circuitBreaker: false
    outlierEjection: false
${listeners}`,
      'test.yaml',
    )
    const orders = config.services.get('orders')!
    const reports = config.services.get('reports')!
    expect(orders.retry?.attempts).toBe(5)
    expect(orders.breaker?.failureThreshold).toBe(3)
    expect(orders.outlierEjection?.consecutiveFailures).toBe(2)
    expect(reports.retry).toBeUndefined()
    expect(reports.breaker).toBeUndefined()
    expect(reports.outlierEjection).toBeUndefined()
    // The rest of what was merged is kept.
    expect(reports.loadBalancer).toBe('least-request')
  })

  it('takes false alone: true and other values are refused, naming the forms', () => {
    const file = (setting: string): string =>
      `services:\n  a: { endpoints: [http://127.0.0.1:3001], ${setting} }\n${listeners}`
    expect(problems(file('retry: true'))).toEqual([
      'services.a.retry: expected false (off) or a mapping of retry settings, got true',
    ])
    expect(problems(file('circuitBreaker: "no"'))).toEqual([
      'services.a.circuitBreaker: expected false (off) or a mapping of circuit breaker settings, got "no"',
    ])
    // A mapping's own problems are reported as before.
    expect(problems(file('retry: { attempts: 0 }'))).toEqual([
      'services.a.retry.attempts: expected integer >= 1, got 0',
    ])
    expect(problems(file('retry: { attemps: 2 }'))).toEqual([
      'services.a.retry.attemps: unknown key (not part of the proxy config)',
    ])
  })

  it('still refuses null, now saying that false turns the section off', () => {
    const file = `services:\n  a: { endpoints: [http://127.0.0.1:3001], retry: ~ }\n${listeners}`
    expect(problems(file)).toEqual([
      'services.a.retry: expected a mapping, got null (an empty value): leave retry out or write "retry: false" to go without it, or write "retry: {}" for its defaults',
    ])
  })
})
