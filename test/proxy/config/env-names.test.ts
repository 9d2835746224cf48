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

// A file path or store URL written with a variable (`${EP_FILE}`, `sqlite:${DATA_DIR}/idem.db`,
// as docker-compose and shells substitute) passed the loader and --check: the proxy then waited
// for a discovery file literally named `${EP_FILE}`, or made a folder `${DATA_DIR}` for the
// idempotency store in the working folder.
const v = (name: string): string => `$${'{'}${name}}`

describe('a path or URL written with a variable', () => {
  it.each([
    [
      'services.app.discovery.file',
      `services:\n  app: { discovery: { file: "${v('EP_FILE')}" } }\n`,
      `"${v('EP_FILE')}"`,
    ],
    [
      'services.app.tls.caFile',
      'services:\n  app: { endpoints: [https://127.0.0.1:3000], tls: { caFile: $CERTS/ca.pem } }\n',
      '"$CERTS/ca.pem"',
    ],
    [
      'services.app.auth.bearer.file',
      `services:\n  app: { endpoints: [http://127.0.0.1:3000], auth: { bearer: { file: "${v('SECRETS')}/t" } } }\n`,
      `"${v('SECRETS')}/t"`,
    ],
    [
      'idempotency.url',
      `services:\n  app: { endpoints: [http://127.0.0.1:3000] }\nidempotency: { url: "sqlite:${v('DATA_DIR')}/idem.db" }\n`,
      `"sqlite:${v('DATA_DIR')}/idem.db"`,
    ],
  ])('is refused at %s, saying no variable is substituted', (path, yaml, got) => {
    const message = problemsOf(`${yaml}${listeners}`)
    expect(message).toContain('(1 problem)')
    expect(message).toContain(`${path}: expected `)
    expect(message).toContain(`(the config substitutes no variables: write it out), got ${got}`)
  })

  it('takes a path with a $ that no shell would substitute', () => {
    const config = parseProxyConfig(
      `services:\n  app: { discovery: { file: /etc/app/endpoints$1 } }\n${listeners}`,
      'test.yaml',
    )
    expect(config.services.get('app')?.discovery).toEqual({
      kind: 'file',
      path: '/etc/app/endpoints$1',
    })
  })
})
