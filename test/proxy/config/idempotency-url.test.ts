// idempotency.url is opened only at start (openProxyIdempotency, through parseDatabaseUrl), so a
// URL the store refuses passed the loader and `--check` and then stopped the start; and an
// in-memory SQLite database (`sqlite::memory:`) passed as the shared store workers > 1 need,
// though each worker opens its own, so a retried POST that lands on another worker ran twice.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const config = (url: string, workers = 1): string => `
services: { app: { endpoints: [http://127.0.0.1:3000] } }
listeners:
  - name: in
    role: gateway
    port: 8080
    routes: [{ name: r, targets: [{ service: app }], idempotency: {} }]
idempotency: { url: ${JSON.stringify(url)} }
workers: ${workers}
`

describe('idempotency.url', () => {
  it.each([
    ['sqlite:', '"memory", "sqlite:<path>" or "postgres://..."'],
    ['sqlite:x.db?mode=ro', 'a sqlite: URL without a query'],
    ['sqlite:100%.db', 'percent-escapes are valid UTF-8'],
    ['sqlite:~/proxy.db', '~ is not expanded here'],
    ['postgres://', '"memory", "sqlite:<path>" or "postgres://..."'],
    ['postgres://db.internal/proxy?ssl_mode=require', 'it would ignore "ssl_mode"'],
    ['postgresql://db.internal:99999/proxy', 'a valid postgres:// URL'],
  ])('refuses %s, which the store would refuse at start', (url, expected) => {
    const message = problemsOf(config(url))
    expect(message).toContain('(1 problem)')
    expect(message).toContain('idempotency.url: expected ')
    expect(message).toContain(expected)
  })

  it.each(['sqlite::memory:', 'sqlite:%3Amemory%3A'])(
    'refuses %s with workers > 1: each worker would have its own',
    (url) => {
      expect(problemsOf(config(url, 4))).toContain(
        'idempotency.url: expected a shared store (sqlite:<path> or postgres://...) when workers > 1',
      )
    },
  )

  it('refuses a password in a URL whose scheme is written in capitals', () => {
    expect(problemsOf(config('Postgres://proxy:hunter2@db.internal/proxy'))).toContain(
      'idempotency.url: expected a URL without a password',
    )
  })

  // pg-connection-string decodes query keys (and the URL parser drops raw tabs and line
  // breaks), so each of these sets the password; the check looked for the literal `password=`.
  it.each([
    'postgres://proxy@db.internal/proxy?pass%77ord=HUNTER2',
    'postgres://proxy@db.internal/proxy?%70assword=HUNTER2',
    'postgres://proxy@db.internal/proxy?sslmode=require&pass%77ord=HUNTER2',
    'postgres://proxy@db.internal/proxy?pass\tword=HUNTER2',
    'postgres://proxy@db.internal/proxy?sslpass%77ord=HUNTER2',
  ])('refuses %j, a password under an encoded query key, without repeating it', (url) => {
    const message = problemsOf(config(url))
    expect(message).toContain('idempotency.url: expected a URL without a password')
    expect(message).not.toContain('HUNTER2')
  })

  // Encoded twice, the key sets no password (pg decodes once and refuses the parameter
  // `pass%77ord` as one it would ignore), but the refusal quoted the URL with its value.
  it.each([
    'postgres://proxy@db.internal/proxy?pass%2577ord=HUNTER2',
    'postgres://proxy@db.internal/proxy?sslpass%252577ord=HUNTER2',
  ])('refuses %j, a key encoded more than once, without repeating its value', (url) => {
    const message = problemsOf(config(url))
    expect(message).toContain('(1 problem)')
    expect(message).toContain('idempotency.url: expected ')
    expect(message).not.toContain('HUNTER2')
  })

  it('reports an empty URL once', () => {
    const message = problemsOf(config(''))
    expect(message).toContain('(1 problem)')
    expect(message).toContain('idempotency.url: expected ')
  })

  it.each([
    ['memory', 1],
    ['sqlite::memory:', 1],
    ['sqlite:./proxy-idempotency.db', 4],
    ['SQLITE:./proxy-idempotency.db', 4],
    ['postgres://proxy@db.internal/proxy?sslmode=require', 4],
    ['Postgresql://proxy@db.internal/proxy', 4],
  ] as const)('takes %s with workers %d', (url, workers) => {
    expect(parseProxyConfig(config(url, workers), 'test.yaml').idempotency?.url).toBe(url)
  })
})
