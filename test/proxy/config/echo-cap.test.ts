// A problem repeats what the file holds so the reader can find it, but it repeated all of it: a
// megabyte pasted into one field (a key, a prefix, a tag, an alias) made a megabyte message,
// printed by --check, logged by a refused reload and returned by the admin API. Each value is
// now shown up to 100 characters, then an ellipsis and its full length.

import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { checkAdminTokenFile } from '../../../src/proxy/config/files.js'
import { parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const big = 'x'.repeat(1_000_000)
const cut = `${'x'.repeat(100)}…`
const service = 'services:\n  app: { endpoints: [http://127.0.0.1:3000] }\n'
const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'
const gateway = (route: string): string =>
  `${service}listeners: [{ name: in, role: gateway, port: 8080, routes: [${route}] }]\n`

describe('a long value in a problem', () => {
  it.each([
    [
      'a bad value',
      `services:\n  app: { endpoints: ["${big}"] }\n${listeners}`,
      `got "${cut}" (1000000 characters)`,
    ],
    [
      'an unknown key',
      `services:\n  app: { endpoints: [http://127.0.0.1:3000], ${big}: 1 }\n${listeners}`,
      `services.app["${cut}" (1000000 characters)]: unknown key`,
    ],
    [
      'a bad service name (explicit key)',
      `services:\n  ? "${big}"\n  : { endpoints: [http://127.0.0.1:3000] }\n${listeners}`,
      `got "${cut}" (1000000 characters)`,
    ],
    [
      'a tag',
      `services:\n  app: { endpoints: [!${big} http://127.0.0.1:3000] }\n${listeners}`,
      `got the tag !${'x'.repeat(99)}… (1000001 characters)`,
    ],
    [
      'an alias',
      `services:\n  app: { endpoints: [*${big}] }\n${listeners}`,
      '(1000060 characters)',
    ],
    [
      'a prefix named in another check',
      gateway(
        `{ name: r, match: { prefix: "/${big}" }, stripPrefix: /b, targets: [{ service: app }] }`,
      ),
      `a prefix of match.prefix (/${'x'.repeat(99)}… (1000001 characters))`,
    ],
    [
      'a prefix that is not normalized',
      gateway(`{ name: r, match: { prefix: "/${big}/./" }, targets: [{ service: app }] }`),
      `a normalized path (/${'x'.repeat(99)}… (1000002 characters))`,
    ],
    [
      'a header named twice',
      gateway(
        `{ name: r, match: { headers: { ${big}: a, ${big.toUpperCase()}: b } }, targets: [{ service: app }] }`,
      ),
      `(as ${cut} (1000000 characters); names are case-insensitive)`,
    ],
    [
      'a route name',
      gateway(
        `{ name: "${big}", targets: [{ service: app }] }, { name: r, targets: [{ service: app }] }`,
      ),
      `listeners[0].routes[0] (${cut} (1000000 characters)) does not always take first`,
    ],
  ])('%s is cut to 100 characters and its length', (_, yaml, shown) => {
    const message = problemsOf(yaml)
    expect(message).toContain(shown)
    expect(message.length).toBeLessThan(3_000)
  })

  it('keeps a value of 100 characters whole', () => {
    const message = problemsOf(
      `services:\n  app: { endpoints: ["${'y'.repeat(100)}"] }\n${listeners}`,
    )
    expect(message).toContain(`got "${'y'.repeat(100)}" (line 2`)
  })

  it('is cut in the admin token file problem', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bw-echo-'))
    const file = join(dir, 'd'.repeat(200), 'token')
    const config = parseProxyConfig(
      `${service}${listeners}admin: { port: 0, token: { file: ${JSON.stringify(file)} } }\n`,
      'test.yaml',
    )
    const error = checkAdminTokenFile(config, 'test.yaml')
    await expect(error).rejects.toThrow(`(${file.length} characters)`)
    await expect(error).rejects.not.toThrow(file)
  })
})
