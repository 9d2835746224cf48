// What the HTTP client's types refuse at compile time (`npm run typecheck` checks this file):
// both compiled before and threw INVALID_OPTION at run time. The calls sit in functions that
// are never called: no request is sent.
import { afterEach, describe, expect, expectTypeOf, it } from 'vitest'
import {
  createHttpClient,
  type HttpClient,
  type HttpRequestOptions,
  type HttpServiceOptions,
} from '../../src/http/index.js'

const clients: HttpClient[] = []
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()))
})

describe('HTTP client types', () => {
  it('refuses body and json together', () => {
    const both = { path: '/x', body: 'a', json: {} } as const
    // @ts-expect-error body and json are exclusive
    const refused: HttpRequestOptions = both
    expect(refused).toBe(both)
    const ok: HttpRequestOptions[] = [
      { path: '/x', body: 'a' },
      { path: '/x', body: new Uint8Array(1), json: undefined },
      { path: '/x', json: { a: 1 } },
      { path: '/x', json: null },
      { path: '/x', json: 1, body: undefined },
      { path: '/x' },
    ]
    expect(ok).toHaveLength(6)
  })

  it('types the service names from a literal services object', () => {
    const client = createHttpClient({
      services: {
        inventory: { baseUrl: 'http://127.0.0.1:1' },
        payments: { baseUrl: 'http://127.0.0.1:1' },
      },
    })
    clients.push(client)
    expectTypeOf(client).toEqualTypeOf<HttpClient<'inventory' | 'payments'>>()
    expectTypeOf(client.services).toEqualTypeOf<readonly ('inventory' | 'payments')[]>()
    expect(client.services).toEqual(['inventory', 'payments'])
    const unsent = (): unknown => [
      client.request('inventory', { path: '/items' }),
      // @ts-expect-error not a declared service
      client.request('nope', { path: '/x' }),
      // @ts-expect-error not a declared service
      client.service('nope'),
      client.request('payments', { method: 'POST', path: '/c', json: { amount: 1 } }),
      // @ts-expect-error body and json are exclusive
      client.request('payments', { path: '/x', body: 'a', json: {} }),
    ]
    expect(typeof unsent).toBe('function')
    expectTypeOf(client.state()).toEqualTypeOf<
      Readonly<Record<'inventory' | 'payments', ReturnType<HttpClient['state']>[string]>>
    >()
  })

  it('takes any string when the services are not known at compile time', () => {
    const services: Record<string, HttpServiceOptions> = { a: { baseUrl: 'http://127.0.0.1:1' } }
    const client = createHttpClient({ services })
    clients.push(client)
    expectTypeOf(client).toEqualTypeOf<HttpClient<string>>()
    const name: string = 'a'
    const unsent = (): unknown => client.request(name, { path: '/x' })
    expect(typeof unsent).toBe('function')
    // A typed client is still an HttpClient where one is expected.
    const typed: HttpClient = createHttpClient({
      services: { b: { baseUrl: 'http://127.0.0.1:1' } },
    })
    clients.push(typed)
    expect(typed.services).toEqual(['b'])
  })
})
