// docs/proxy-config.schema.json compiles in Ajv's strict mode (draft 2020-12), refuses files the
// loader refuses on a single field's rule where a JSON Schema keyword can say it, and accepts
// the configs the docs and the shop example show (found by exploratory testing: the schema
// used `format: "starts_with"`, which strict Ajv refuses to compile, and without strict mode it
// took `endpoints: [foo]`, `retryOnStatus: [450]`, `host: "[::1]"` and a prefix with a newline).
import { readFileSync } from 'node:fs'
import { Ajv2020 } from 'ajv/dist/2020.js'
import { describe, expect, it } from 'vitest'
import YAML from 'yaml'
import { proxyConfigYaml } from '../../../examples/shop/proxy.js'
import { validateProxyDocument } from '../../../src/proxy/config/load.js'

const schema = JSON.parse(
  readFileSync(new URL('../../../docs/proxy-config.schema.json', import.meta.url), 'utf8'),
) as object

function compile() {
  return new Ajv2020({ strict: true, allErrors: true }).compile(schema)
}

const base = `services:
  a: { endpoints: [http://127.0.0.1:19101] }
listeners:
  - { name: out, role: ambassador, port: 19201 }
`
const gateway = (route: string) =>
  `${base}  - name: gw\n    role: gateway\n    port: 19202\n    routes: [${route}]\n`

// Documents of the docs' YAML blocks that are whole configs (they have both top-level keys).
function docsConfigs(): string[] {
  const text = readFileSync(new URL('../../../docs/proxy.md', import.meta.url), 'utf8')
  return [...text.matchAll(/```yaml\n([\s\S]*?)```/g)]
    .map((m) => m[1] as string)
    .filter((yaml) => /^services:/m.test(yaml) && /^listeners:/m.test(yaml))
}

describe('docs/proxy-config.schema.json under Ajv 2020 strict', () => {
  it('compiles', () => {
    expect(compile).not.toThrow()
  })

  it.each([
    ['an endpoint that is no URL', base.replace('http://127.0.0.1:19101', 'foo')],
    [
      'a status not worth retrying',
      base.replace('endpoints:', 'retry: { retryOnStatus: [450] }, endpoints:'),
    ],
    ['a bracketed IPv6 bind host', base.replace('port: 19201', 'port: 19201, host: "[::1]"')],
    [
      'a route prefix with a newline',
      gateway('{ name: r, match: { prefix: "/a\\nb" }, targets: [{ service: a }] }'),
    ],
  ])('refuses %s, as the loader does', (_what, yaml) => {
    expect(() => validateProxyDocument(yaml, 'case.yaml')).toThrow()
    const validate = compile()
    expect(validate(YAML.parse(yaml))).toBe(false)
  })

  it('accepts the base case and the configs of the docs and the shop example', () => {
    const validate = compile()
    const configs = [
      base,
      gateway('{ name: r, match: { prefix: /orders/v1 }, targets: [{ service: a }] }'),
      base.replace('port: 19201', 'port: 19201, host: "::1"'),
      base.replace('endpoints:', 'retry: { retryOnStatus: [408, 425, 429, 500, 599] }, endpoints:'),
      base.replace('http://127.0.0.1:19101', '"https://[::1]:8443"'),
      proxyConfigYaml(
        {
          legacy: 'http://127.0.0.1:1',
          orders: 'http://orders.internal:2',
          inventory: 'http://10.0.0.3:3',
        },
        10,
      ),
      ...docsConfigs(),
    ]
    expect(configs.length).toBeGreaterThan(6)
    for (const yaml of configs) {
      validateProxyDocument(yaml, 'example.yaml')
      const ok = validate(YAML.parse(yaml, { merge: true }))
      expect({ yaml, errors: validate.errors }).toMatchObject({ errors: null })
      expect(ok).toBe(true)
    }
  })
})
