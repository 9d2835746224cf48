// A config path that is no regular file (a FIFO nobody writes to) hung `--check` and the start
// for ever, past --start-timeout, and each reload left a read stuck in libuv's threadpool. It
// is refused before any read, naming what it is.

import { execFileSync } from 'node:child_process'
import {
  closeSync,
  constants,
  mkdirSync,
  mkdtempSync,
  openSync,
  truncateSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { proxyCommand } from '../../../src/cli/proxy.js'
import { ConfigInvalidError, loadProxyConfig } from '../../../src/proxy/config/index.js'
import { maxConfigBytes } from '../../../src/proxy/config/load.js'
import { captureLog } from '../runtime/helpers.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-cfg-fifo-'))
const fifo = join(dir, 'proxy.yaml')
execFileSync('mkfifo', [fifo])

// Ends a read a failing run left waiting on the FIFO (it then sees end of file).
afterEach(() => {
  try {
    closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK))
  } catch {
    // No reader waiting.
  }
})

describe('a config path that is no regular file', () => {
  it('is refused by the loader without reading it', async () => {
    const error = await loadProxyConfig(fifo).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ConfigInvalidError)
    expect((error as Error).message).toContain('(file): expected a regular YAML file, got a FIFO')
  }, 5_000)

  it('is refused by a directory too', async () => {
    const folder = join(dir, 'folder.yaml')
    mkdirSync(folder)
    const error = await loadProxyConfig(folder).catch((e: unknown) => e)
    expect((error as Error).message).toContain('expected a regular YAML file, got a directory')
  })

  it('fails --check and the start with the same words (exit 1 and 2)', async () => {
    for (const [args, code] of [
      [['--check'], 1],
      [[], 2],
    ] as const) {
      const err = captureLog()
      const out = captureLog()
      expect(await proxyCommand(['--config', fifo, ...args], { stderr: err, stdout: out })).toBe(
        code,
      )
      expect(err.text()).toContain('expected a regular YAML file, got a FIFO')
    }
  }, 5_000)
})

// A file of any size was read and parsed whole: --config pointed at a log, or a reload of a
// file a tool had filled, held a running proxy's event loop (every request) for seconds while
// the YAML parser ran (measured: 12 s and 760 MB for 126 MB of comments).
describe('a config file larger than any config', () => {
  it('is refused before it is read, naming its size and the limit', async () => {
    const big = join(dir, 'big.yaml')
    // Sparse: no disk is written.
    closeSync(openSync(big, 'w'))
    truncateSync(big, maxConfigBytes + 1)
    const error = await loadProxyConfig(big).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ConfigInvalidError)
    expect((error as Error).message).toContain(
      `(file): expected a YAML file of at most 4 MiB (${maxConfigBytes} bytes), got ${maxConfigBytes + 1} bytes`,
    )
  })

  it('is read up to the limit', async () => {
    const file = join(dir, 'at-limit.yaml')
    const yaml =
      'services: { app: { endpoints: [http://127.0.0.1:3000] } }\nlisteners: [{ name: out, role: ambassador, port: 15001 }]\n'
    writeFileSync(file, yaml.padEnd(maxConfigBytes, '#'))
    expect((await loadProxyConfig(file)).services.size).toBe(1)
  })
})
