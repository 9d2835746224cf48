// `null` for an http client option was taken as its default wherever it was read with
// `?? default` (a service's retry: null retried with the default policy, its bulkhead: null
// queued by the default one). Only undefined (or leaving it out) means the default: every
// option given as null is refused with INVALID_OPTION naming it, before anything is sent. A
// request's `json` is the caller's data: null is sent as the JSON body `null`. No server for the
// refusals: a loopback port nobody listens on, so a request that went out would fail otherwise.
import { afterAll, describe, expect, it } from 'vitest'
import { httpClientOptions } from '../../src/http/client.js'
import { createHttpClient } from '../../src/http/index.js'
import { executeOptions, requestOptions, serviceOptions } from '../../src/http/service.js'
import {
  expectNullOptionsRefused,
  expectUndefinedOptionsAccepted,
  type NullOptionCase,
} from '../support/null-option.js'
import { startServer } from './servers.js'

const baseUrl = 'http://127.0.0.1:9'

describe('http client options given as null', () => {
  const client = createHttpClient({ services: { svc: { baseUrl } } })
  afterAll(() => client.close())

  const bags: Record<string, NullOptionCase> = {
    createHttpClient: {
      build: async (o) => (await createHttpClient(o as never)).close(),
      good: { services: { svc: { baseUrl } } },
      keys: httpClientOptions,
      prefix: undefined,
    },
    'a service': {
      build: (o) => createHttpClient({ services: { svc: o as never } }).close(),
      good: { baseUrl },
      keys: serviceOptions,
      prefix: 'services.svc',
    },
    request: {
      build: (o) => client.request('svc', o as never),
      good: { path: '/x', retry: false },
      keys: requestOptions,
      prefix: 'request',
      data: ['json'],
    },
    execute: {
      build: (o) => client.service('svc').execute(() => 1, o),
      good: {},
      keys: executeOptions,
      prefix: 'execute',
    },
  }

  it.each(Object.keys(bags))('%s refuses each option given as null', (name) =>
    expectNullOptionsRefused(bags[name]!),
  )

  const offline = Object.keys(bags).filter((name) => name !== 'request')
  it.each(offline)('%s takes each optional option given as undefined', (name) =>
    expectUndefinedOptionsAccepted(bags[name]!),
  )

  // A request that passes the checks goes out: this one needs a server that answers.
  it('request takes each optional option given as undefined', async () => {
    const server = await startServer((_req, res) => {
      res.end('{}')
    })
    const served = createHttpClient({ services: { svc: { baseUrl: server.url } } })
    try {
      await expectUndefinedOptionsAccepted({
        ...bags.request!,
        build: (o) => served.request('svc', o as never),
      })
    } finally {
      await served.close()
      await server.close()
    }
  })

  it('takes json: null as the JSON body null (data, not an option)', async () => {
    const sent = client.request('svc', { method: 'POST', path: '/x', json: null, retry: false })
    const error = await sent.catch((e: unknown) => e)
    // It went out: refused by the connection, not by the options check.
    expect(error).not.toMatchObject({ code: 'INVALID_OPTION' })
  })
})

// A policy bag's option given as undefined was spread over the service's defaults and replaced
// them: bulkhead: { maxConcurrent: undefined } was refused, maxQueued: undefined queued nothing
// (the bulkhead's own 0, not the service's 64), name: undefined left the bulkhead and the
// breaker unnamed. Undefined means left out there as everywhere else.
describe('http client policy options given as undefined', () => {
  it('keeps the service defaults for each policy option given as undefined', async () => {
    const server = await startServer((_req, res) => {
      res.end('{}')
    })
    const client = createHttpClient({
      services: {
        svc: {
          baseUrl: server.url,
          bulkhead: { maxConcurrent: undefined, maxQueued: undefined, name: undefined },
          circuitBreaker: { name: undefined },
          retry: { maxAttempts: undefined },
          retryBudget: { ratio: undefined },
        },
      },
    })
    try {
      const service = client.service('svc')
      expect(service.bulkhead?.name).toBe('svc')
      expect(service.breaker?.name).toBe('svc')
      // 32 running and 64 queued: the 97th call is the first one refused.
      const calls = Array.from({ length: 97 }, () =>
        client.request('svc', { path: '/x' }).then(
          () => 'ok',
          (error: { code?: string }) => error.code,
        ),
      )
      const outcomes = await Promise.all(calls)
      expect(outcomes.filter((o) => o === 'BULKHEAD_FULL')).toHaveLength(1)
      expect(outcomes.filter((o) => o === 'ok')).toHaveLength(96)
    } finally {
      await client.close()
      await server.close()
    }
  })
})
