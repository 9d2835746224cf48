import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { ConfigInvalidError, parseProxyConfig } from '../../../src/proxy/config/index.js'

// Wherever a secret is written inline, and whatever it looks like, the error names the path and
// never repeats the value.
const placements: ((secret: string) => string)[] = [
  (secret) => `admin: { port: 2, token: ${secret} }\n`,
  (secret) => `admin: { port: 2, token: { env: T, value: ${secret} } }\n`,
  (secret) =>
    `services:\n  b:\n    endpoints: [http://127.0.0.1:2]\n    auth: { bearer: ${secret} }\n`,
  (secret) =>
    `services:\n  b:\n    endpoints: [http://127.0.0.1:2]\n    auth: { apiKey: { header: x-key, key: ${secret} } }\n`,
  (secret) => `services:\n  b:\n    endpoints: ["http://user:${secret}@127.0.0.1:2"]\n`,
  (secret) => `idempotency: { url: "postgres://proxy:${secret}@db/x" }\n`,
  // node-postgres takes a password from the query string too.
  (secret) => `idempotency: { url: "postgres://proxy@db/x?sslmode=disable&password=${secret}" }\n`,
  (secret) => `idempotency: { url: "postgresql://db/x?sslpassword=${secret}" }\n`,
  (secret) => `services:\n  b:\n    endpoints: [http://127.0.0.1:2]\n    password: ${secret}\n`,
  (secret) => `admin: { port: 2, token: ${secret} x: y }\n`,
]

const base = `listeners: [{ name: out, role: ambassador, port: 1 }]\n`

describe('config errors and inline secrets (property)', () => {
  it('never echo the secret, and name where it was', () => {
    fc.assert(
      fc.property(
        fc.stringMatching(/^[A-Za-z0-9_-]{12,40}$/).filter((s) => /[A-Za-z]/.test(s)),
        fc.integer({ min: 0, max: placements.length - 1 }),
        (secret, which) => {
          const place = placements[which] as (s: string) => string
          const text = place(secret).startsWith('services:')
            ? `${place(secret)}${base}`
            : `services:\n  a: { endpoints: [http://127.0.0.1:1] }\n${base}${place(secret)}`
          let message = ''
          try {
            parseProxyConfig(text, 'prop.yaml')
          } catch (error) {
            expect(error).toBeInstanceOf(ConfigInvalidError)
            message = (error as Error).message
          }
          expect(message).toMatch(/\(\d+ problems?\)/)
          expect(message).not.toContain(secret)
        },
      ),
      { numRuns: 300 },
    )
  })
})
