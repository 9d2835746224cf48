// A secret read with `{ env: NAME }` whose variable was unset, empty, or held a line break or
// control character was only logged as a warning: requests to the service went without the
// credential (answered 401 for ever), and an admin token from such a variable refused every
// admin request, while `--check` called the file valid. A variable cannot appear later in a
// running process, so `--check`, the start and a reload now refuse it, naming the setting and
// the variable, never its value.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import { BreakwaterError } from '../../../src/core/errors.js'
import { createJsonLogger } from '../../../src/observability/index.js'
import { ConfigInvalidError, startProxy } from '../../../src/proxy/index.js'
import { startProxyRuntime } from '../../../src/proxy/runtime.js'
import { spawnCli } from '../../process/cli-process.js'
import { captureLog } from '../runtime/helpers.js'
import { expectStartRefused } from './problems.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-env-secrets-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
afterEach(() => vi.unstubAllEnvs())

// Unique names, so nothing in the environment the tests run in sets them.
const variable = 'BW_ENV_SECRETS_TEST_VALUE'
const secret = 'sekret-0123456789abcdef'

const listeners = 'listeners: [{ name: out, role: ambassador, port: 0 }]\n'
const service = (auth: string): string =>
  `services: { orders: { endpoints: [http://127.0.0.1:1], auth: ${auth} } }\n${listeners}`
const places = [
  ['services.orders.auth.bearer.env', service(`{ bearer: { env: ${variable} } }`)],
  [
    'services.orders.auth.apiKey.env',
    service(`{ apiKey: { header: x-api-key, env: ${variable} } }`),
  ],
  [
    'admin.token.env',
    `services: { orders: { endpoints: [http://127.0.0.1:1] } }\n${listeners}admin: { port: 0, token: { env: ${variable} } }\n`,
  ],
] as const

// The value (undefined: unset) and what the refusal says of it.
const unusable: [string, string | undefined, string][] = [
  ['unset', undefined, 'not set'],
  ['empty', '', 'empty (or whitespace only)'],
  ['whitespace only', ' \t ', 'empty (or whitespace only)'],
]
const unheadable = `${secret}\nX-Injected: 1`

/** Sets (or unsets) the variable for this process, where services read their credentials. */
function setVariable(value: string | undefined): Record<string, string | undefined> {
  vi.stubEnv(variable, value)
  return value === undefined ? {} : { [variable]: value }
}

function write(name: string, text: string): string {
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

async function check(
  yaml: string,
  env: Record<string, string | undefined>,
): Promise<{ code: number; text: string }> {
  const file = write('check.yaml', yaml)
  const out = captureLog()
  const err = captureLog()
  const code = await proxyCommand(['--config', file, '--check'], { stdout: out, stderr: err, env })
  return { code, text: err.text() + out.text() }
}

async function startError(yaml: string, env: Record<string, string | undefined>) {
  const log = captureLog()
  const error = await startProxy({
    config: yaml,
    logger: createJsonLogger({ output: log }),
    watch: false,
    env,
  }).then(
    (proxy) => proxy.close().then(() => undefined),
    (e: unknown) => e,
  )
  return { error, log }
}

describe.each(places)('a secret from { env } at %s', (path, yaml) => {
  it.each(unusable)(
    '--check refuses one %s, naming the setting and the variable',
    async (_, value, rule) => {
      const { code, text } = await check(yaml, setVariable(value))
      expect(code).toBe(1)
      expect(text).toContain(`${path}: environment variable ${variable}: ${rule}`)
    },
  )

  it('--check refuses one holding a line break, without showing the value', async () => {
    const { code, text } = await check(yaml, setVariable(unheadable))
    expect(code).toBe(1)
    expect(text).toContain(`${path}: environment variable ${variable}: `)
    expect(text).not.toContain(secret)
    expect(text).not.toContain('X-Injected')
  })

  it('--check takes a usable one', async () => {
    const { code, text } = await check(yaml, setVariable(` ${secret}\n`))
    expect(text).toContain('valid')
    expect(code).toBe(0)
  })

  it.each(unusable)('startProxy refuses one %s with CONFIG_INVALID', async (_, value, rule) => {
    const { error, log } = await startError(yaml, setVariable(value))
    expect(log.text()).not.toContain('proxy started')
    expect(error).toBeInstanceOf(ConfigInvalidError)
    expect(BreakwaterError.is(error) && error.code).toBe('CONFIG_INVALID')
    expect((error as ConfigInvalidError).problems).toMatchObject([{ path }])
    expect((error as Error).message).toContain(`${path}: environment variable ${variable}: ${rule}`)
  })

  it('startProxy refuses one holding a line break, without showing the value', async () => {
    const { error, log } = await startError(yaml, setVariable(unheadable))
    expect(error).toBeInstanceOf(ConfigInvalidError)
    expect((error as ConfigInvalidError).problems).toMatchObject([{ path }])
    expect((error as Error).message).not.toContain(secret)
    expect(log.text()).not.toContain(secret)
  })

  it('a reload to a config with an unset one is refused; the old config stays', async () => {
    setVariable(undefined)
    const log = captureLog()
    const proxy = await startProxyRuntime({
      config: `services: { orders: { endpoints: [http://127.0.0.1:1] } }\n${listeners}`,
      logger: createJsonLogger({ output: log }),
      watch: false,
      env: {},
    })
    try {
      const refused = await proxy.tryReload(yaml)
      expect(refused).toBeInstanceOf(ConfigInvalidError)
      expect(refused?.problems).toMatchObject([{ path }])
      expect(proxy.config().services.get('orders')?.auth).toBeUndefined()
      expect(proxy.config().admin).toBeUndefined()
      expect(log.lines()).toContainEqual(
        expect.objectContaining({
          msg: 'config reload refused; the running config stays in force',
          problems: [expect.stringContaining(`${path}: environment variable ${variable}: not set`)],
        }),
      )
    } finally {
      await proxy.close()
    }
  })
})

describe('an admin token from { env }', () => {
  it('is refused with a space inside, by the rule a token file follows', async () => {
    const env = { [variable]: 'two words-0123456789' }
    const { code, text } = await check(places[2][1], env)
    expect(code).toBe(1)
    expect(text).toContain(
      `admin.token.env: environment variable ${variable}: a character outside visible ASCII inside`,
    )
    expect(text).not.toContain('words-0123456789')
    const { error } = await startError(places[2][1], env)
    expect((error as ConfigInvalidError).problems).toMatchObject([{ path: 'admin.token.env' }])
  })
})

describe('breakwater proxy', () => {
  it('refuses to start on an unset one, with one process or with workers', async () => {
    await expectStartRefused(
      write('cli.yaml', places[0][1]),
      `services.orders.auth.bearer.env: environment variable ${variable}: not set`,
    )
  })

  it('with workers refuses a reload to a file with an unset one, keeping the config', async () => {
    const config = write(
      'cli-reload.yaml',
      `services: { orders: { endpoints: [http://127.0.0.1:1] } }\n${listeners}workers: 2\n`,
    )
    const cli = spawnCli(['proxy', '--config', config])
    try {
      await cli.waitForLine(
        (l) => l.msg === 'workers started' || l.msg === 'proxy started',
        'a start',
      )
      writeFileSync(config, `${places[0][1]}workers: 2\n`)
      const refused = await cli.waitForLine(
        (l) => l.msg === 'config reload refused; the running config stays in force',
        'the refused reload',
      )
      expect(refused.problems).toEqual([
        `services.orders.auth.bearer.env: environment variable ${variable}: not set: requests would go without the credential`,
      ])
      // Refused in the primary: no worker was asked to apply it.
      expect(cli.lines.some((l) => l.msg === 'config reloaded')).toBe(false)
    } finally {
      cli.kill()
    }
  })
})

describe('--check with an { env } problem and a file that cannot be used', () => {
  // Both stop the proxy from starting: listing only the variable would send the operator back
  // for a second round once it is set.
  it('lists both, the variable and the file', async () => {
    const missing = join(dir, 'no-such-token')
    const yaml = `services:\n  orders: { endpoints: [http://127.0.0.1:1], auth: { bearer: { env: ${variable} } } }\n  billing: { endpoints: [http://127.0.0.1:1], auth: { bearer: { file: ${missing} } } }\n${listeners}`
    const { code, text } = await check(yaml, {})
    expect(code).toBe(1)
    expect(text).toContain(
      `services.orders.auth.bearer.env: environment variable ${variable}: not set`,
    )
    expect(text).toContain('services.billing.auth.bearer.file:')
    expect(text).toContain('no-such-token')
  })
})
