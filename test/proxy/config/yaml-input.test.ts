// What the YAML layer did not read as written was taken without a word: a tag the loader does
// not know (`!env ORDERS_HOST`, as other tools substitute environment variables) was dropped and
// the text after it used as the value, so the service resolved the literal name ORDERS_HOST;
// and bytes that are not UTF-8 (a file saved as Latin-1) were read as U+FFFD, so
// `sqlite:./données.db` opened a new database under another name.

import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it, vi } from 'vitest'
import { loadProxyConfig, parseProxyConfig } from '../../../src/proxy/config/index.js'
import { problemsOf } from './problems.js'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 15001 }]\n'

describe('YAML tags', () => {
  it('refuses a tag the loader does not resolve, naming the setting and the tag', () => {
    const message = problemsOf(`services:
  orders:
    discovery: { dns: { name: !env ORDERS_HOST, port: 8080 } }
${listeners}`)
    expect(message).toContain('(1 problem)')
    expect(message).toContain(
      'services.orders.discovery.dns.name: expected a value without a YAML tag',
    )
    expect(message).toContain('got the tag !env (line 3, column 31)')
  })

  it.each([
    ['a tag on a mapping', '    retry: !!str { attempts: 3 }\n', 'services.app.retry', '!!str'],
    [
      'a list item',
      '    endpoints: [!url http://127.0.0.1:3000]\n',
      'services.app.endpoints[0]',
      '!url',
    ],
    [
      'a core tag that does not fit',
      '    rewriteHost: !!bool "no"\n',
      'services.app.rewriteHost',
      '!!bool',
    ],
  ])('refuses %s', (_, line, path, tag) => {
    const yaml = `services:\n  app:\n${line.includes('endpoints') ? '' : '    endpoints: [http://127.0.0.1:3000]\n'}${line}${listeners}`
    const message = problemsOf(yaml)
    expect(message).toContain('(1 problem)')
    expect(message).toContain(`${path}: expected a value without a YAML tag`)
    expect(message).toContain(`got the tag ${tag}`)
  })

  // yaml resolves these YAML 1.1 tags even under the core schema, into a Set, a Map, a Buffer
  // or a Date, which the schema took for an empty mapping: `app: !!set { endpoints }` passed
  // `--check` as a service with no endpoints, and the proxy started it reading a discovery
  // file named "".
  it.each([
    ['!!set', '  app: !!set { endpoints }\n', 'services.app'],
    ['!!omap', '  app: !!omap [{ endpoints: [http://127.0.0.1:3000] }]\n', 'services.app'],
    [
      '!!pairs',
      '  app: { endpoints: [http://127.0.0.1:3000], timeouts: !!pairs [{ readMs: 5 }] }\n',
      'services.app.timeouts',
    ],
    [
      '!!binary',
      '  app: { endpoints: [http://127.0.0.1:3000], tls: { caFile: !!binary aGVsbG8= } }\n',
      'services.app.tls.caFile',
    ],
    [
      '!!timestamp',
      '  app: { endpoints: [http://127.0.0.1:3000], tls: { caFile: !!timestamp 2001-01-01 } }\n',
      'services.app.tls.caFile',
    ],
  ])(
    'refuses the YAML 1.1 tag %s, which would make no mapping of the config',
    (tag, line, path) => {
      const message = problemsOf(`services:\n${line}${listeners}`)
      expect(message).toContain('(1 problem)')
      expect(message).toContain(`${path}: expected a value without a YAML tag`)
      expect(message).toContain(`got the tag ${tag}`)
    },
  )

  // yaml told Node of a key that is a list or mapping with process.emitWarning, so `--check`
  // (and a running proxy, at each reload) printed "(node:…) Warning: Keys with collection values
  // will be stringified… Set mapAsMap: true", advice to yaml's programmer, beside the problem.
  it('names a list used as a key without a Node warning of its own', () => {
    const emitWarning = vi.spyOn(process, 'emitWarning')
    try {
      const message = problemsOf(
        `services:\n  ? [x]\n  : { endpoints: [http://127.0.0.1:3000] }\n${listeners}`,
      )
      expect(message).toContain('services["[ x ]"]: expected a key that is a name')
      expect(emitWarning).not.toHaveBeenCalled()
    } finally {
      emitWarning.mockRestore()
    }
  })

  // A tag (or bytes that are not UTF-8) stopped the loader before the schema, so --check named
  // it alone and the operator found the file's other faults one run at a time.
  it('lists the other problems of the file, and none for the tagged value itself', () => {
    const message = problemsOf(`services:
  orders:
    discovery: { dns: { name: !env ORDERS_HOST, port: 8080 } }
    retyr: { attempts: 2 }
listeners: [{ name: out, role: ambassador, port: !env PORT }]
`)
    expect(message).toContain('(3 problems)')
    expect(message).toContain(
      'services.orders.discovery.dns.name: expected a value without a YAML tag',
    )
    expect(message).toContain('services.orders.retyr: unknown key')
    expect(message).toContain('listeners[0].port: expected a value without a YAML tag')
  })

  it('takes a tag the loader resolves', () => {
    const config = parseProxyConfig(
      `services:\n  app: { endpoints: [!!str http://127.0.0.1:3000] }\n${listeners}drainTimeoutMs: !!int 5\n`,
      'test.yaml',
    )
    expect(config.drainTimeoutMs).toBe(5)
  })
})

describe('a file that is not UTF-8', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bw-config-utf8-'))
  const write = (name: string, ...parts: (string | number[])[]): string => {
    const file = join(dir, name)
    writeFileSync(
      file,
      Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p)))),
    )
    return file
  }

  it('is refused naming the setting whose text is not UTF-8', async () => {
    // "données" in Latin-1: é is the single byte 0xe9.
    const file = write(
      'latin1.yaml',
      `services:\n  app: { endpoints: [http://127.0.0.1:3000] }\n${listeners}idempotency: { url: "sqlite:./donn`,
      [0xe9],
      'es.db" }\n',
    )
    const error = loadProxyConfig(file)
    await expect(error).rejects.toThrow('(1 problem)')
    await expect(error).rejects.toThrow(
      'idempotency.url: expected UTF-8 text, got bytes that are not UTF-8 (save the file as UTF-8) (line 4, column 21)',
    )
  })

  it('is refused when it is UTF-16', async () => {
    const file = write(
      'utf16.yaml',
      [0xff, 0xfe],
      [...Buffer.from(`services: {}\n${listeners}`, 'utf16le')],
    )
    await expect(loadProxyConfig(file)).rejects.toThrow(
      '(root): expected UTF-8 text, got bytes that are not UTF-8 (save the file as UTF-8)',
    )
  })

  it('is read when only a comment is not UTF-8', async () => {
    const file = write(
      'comment.yaml',
      `# caf`,
      [0xe9],
      `\nservices:\n  app: { endpoints: [http://127.0.0.1:3000] }\n${listeners}`,
    )
    expect((await loadProxyConfig(file)).listeners[0]?.name).toBe('out')
  })
})

// yaml's own message for a second document ('--- ' and more) told the operator to call
// YAML.parseAllDocuments(), advice for a programmer using the library, not for a config file.
describe('a file with more than one YAML document', () => {
  it('says the file must hold one document, naming where the second begins', () => {
    const message = problemsOf(`${listeners}---\nservices: {}\n`)
    expect(message).toContain(
      '2:1: YAML syntax error: expected one YAML document, found a second one here (a line `---` or `...` ends the first)',
    )
    expect(message).not.toContain('parseAllDocuments')
  })
})
