// `{ env: NAME }` took any text as NAME: `ORDERS-TOKEN`, `$ORDERS_TOKEN`, a name with a space or
// the token itself pasted there passed the loader and `--check`; the variable was never set, so
// requests went without credentials (a warning in the log) or the admin API refused every call.

import { describe, expect, it } from 'vitest'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'
const places = [
  [
    'services.app.auth.bearer.env',
    (name: string) =>
      `services:\n  app: { endpoints: [http://127.0.0.1:3000], auth: { bearer: { env: ${name} } } }\n${listeners}`,
  ],
  [
    'services.app.auth.apiKey.env',
    (name: string) =>
      `services:\n  app: { endpoints: [http://127.0.0.1:3000], auth: { apiKey: { env: ${name} } } }\n${listeners}`,
  ],
  [
    'admin.token.env',
    (name: string) =>
      `services:\n  app: { endpoints: [http://127.0.0.1:3000] }\n${listeners}admin: { port: 0, token: { env: ${name} } }\n`,
  ],
] as const

describe('{ env: NAME }', () => {
  describe.each(places)('at %s', (path, yaml) => {
    it.each([
      'ORDERS-TOKEN',
      '"$ORDERS_TOKEN"',
      '"ORDERS TOKEN"',
      '1TOKEN',
      'ORDERS=x',
      'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl',
    ])('refuses %s, without echoing it', (name) => {
      const message = problemsOf(yaml(name))
      expect(message).toContain('(1 problem)')
      expect(message).toContain(
        `${path}: expected environment variable name (letters, digits and "_", not starting with a digit), got a string (not shown: it may be the secret itself)`,
      )
      expect(message).not.toContain(name.replaceAll('"', ''))
    })

    it('refuses an empty name, showing it (nothing to hide)', () => {
      expect(problemsOf(yaml('""'))).toContain(
        `${path}: expected environment variable name (letters, digits and "_", not starting with a digit), got ""`,
      )
    })

    it.each(['ORDERS_TOKEN', '_token', 'a1'])('takes %s', (name) => {
      expect(() => parseProxyConfig(yaml(name), 'test.yaml')).not.toThrow()
    })
  })
})
