// `breakwater relay`'s broker TLS settings, in-process: --broker-ca-file, --broker-cert-file,
// --broker-key-file (or BREAKWATER_BROKER_CA_FILE, _CERT_FILE, _KEY_FILE) and the key's
// passphrase from an environment variable or a file, never an argument. Settings a broker URL
// without TLS would ignore, and files the broker adapter refuses (missing, not PEM, a key that
// does not match the certificate, a wrong passphrase) exit 2 naming the flag or variable and the
// path, with no stack trace and never the key or passphrase. No server is needed: the adapter
// reads and checks the files when the relay builds it, before it opens the database.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createTestCerts, type TestCerts } from '../proxy/support/certs.js'
import { createTestSqlite } from '../support/sqlite.js'
import { runRelay as run, writeEncryptedClientKey } from './relay-support.js'

// Made while the file is collected: the tables below name their paths.
const certs: TestCerts = createTestCerts()
const passphrase = 'correct-horse-battery'
const encryptedKeyFile = writeEncryptedClientKey(certs, passphrase)
const passphraseFile = join(certs.dir, 'passphrase.txt')
writeFileSync(passphraseFile, `${passphrase}\n`)
const wrongPassphraseFile = join(certs.dir, 'wrong-passphrase.txt')
writeFileSync(wrongPassphraseFile, 'hunter2-pw\n')
const notPem = join(certs.dir, 'not-pem.txt')
writeFileSync(notPem, 'not PEM\n')
/** A database file that does not exist: the TLS settings are checked before it is opened. */
const missingDb = createTestSqlite('relay-tls-args')

afterAll(() => {
  certs.cleanup()
  missingDb.cleanup()
})

/** `--broker <broker>` with a client certificate file and key file (the test client's by default). */
function withClientCert(
  broker: string,
  keyFile = certs.client.keyFile,
  certFile = certs.client.certFile,
): string[] {
  return ['--broker', broker, '--broker-cert-file', certFile, '--broker-key-file', keyFile]
}

const overTls = 'applies only to a broker reached over TLS (rediss://, amqps://, tls:// or nats://)'

describe('breakwater relay: broker TLS flags refused while the arguments are read (exit 2)', () => {
  const cases: Array<[string, string[], Record<string, string>, string]> = [
    [
      'a CA with the default sql: broker',
      ['--broker-ca-file', certs.ca.certFile],
      {},
      `--broker-ca-file ${overTls}; --broker is sql:, which does not use TLS`,
    ],
    [
      'a client certificate with redis://',
      withClientCert('redis://127.0.0.1:6379'),
      {},
      `--broker-cert-file ${overTls}; --broker is redis://, which does not use TLS`,
    ],
    [
      'a CA from the environment with an amqp:// URL from the environment',
      [],
      {
        BREAKWATER_BROKER_URL: 'amqp://u:hunter2-pw@127.0.0.1:5672',
        BREAKWATER_BROKER_CA_FILE: certs.ca.certFile,
      },
      `BREAKWATER_BROKER_CA_FILE ${overTls}; BREAKWATER_BROKER_URL is amqp://, which does not use TLS`,
    ],
    [
      'a CA with a webhook',
      ['--broker', 'https://hooks.example.com/x', '--broker-ca-file', certs.ca.certFile],
      { BREAKWATER_WEBHOOK_SECRET: 'x'.repeat(16) },
      `--broker-ca-file ${overTls}; a webhook takes no TLS settings (NODE_EXTRA_CA_CERTS=<file> adds a CA for the whole process)`,
    ],
    [
      'the passphrase as an argument',
      ['--broker-key-passphrase', 'hunter2-pw'],
      {},
      '--broker-key-passphrase: secrets are not accepted as arguments (they show in ps and shell history); use --broker-key-passphrase-env or --broker-key-passphrase-file',
    ],
    [
      'the passphrase as --flag=value',
      ['--broker-key-passphrase=hunter2-pw'],
      {},
      '--broker-key-passphrase: secrets are not accepted as arguments',
    ],
    [
      'a certificate without its key',
      ['--broker', 'rediss://127.0.0.1:1', '--broker-cert-file', certs.client.certFile],
      {},
      '--broker-cert-file needs the private key too: --broker-key-file or BREAKWATER_BROKER_KEY_FILE',
    ],
    [
      'a key (from the environment) without its certificate',
      ['--broker', 'tls://127.0.0.1:1'],
      { BREAKWATER_BROKER_KEY_FILE: certs.client.keyFile },
      'BREAKWATER_BROKER_KEY_FILE needs the client certificate too: --broker-cert-file or BREAKWATER_BROKER_CERT_FILE',
    ],
    [
      'a passphrase file without a key',
      ['--broker', 'amqps://127.0.0.1:1', '--broker-key-passphrase-file', passphraseFile],
      {},
      '--broker-key-passphrase-file applies only with a key (--broker-key-file or BREAKWATER_BROKER_KEY_FILE)',
    ],
    [
      'a passphrase variable without a key',
      ['--broker', 'amqps://127.0.0.1:1', '--broker-key-passphrase-env', 'KEY_PW'],
      {},
      '--broker-key-passphrase-env applies only with a key (--broker-key-file or BREAKWATER_BROKER_KEY_FILE)',
    ],
    [
      'a passphrase variable that is no variable name',
      [
        ...withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
        '--broker-key-passphrase-env',
        'key pw',
      ],
      {},
      '--broker-key-passphrase-env must name an environment variable (letters, digits and _), not hold the passphrase',
    ],
    [
      'both passphrase sources',
      [
        ...withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
        '--broker-key-passphrase-env',
        'KEY_PW',
        '--broker-key-passphrase-file',
        passphraseFile,
      ],
      { KEY_PW: passphrase },
      '--broker-key-passphrase-env or --broker-key-passphrase-file, not both',
    ],
    [
      'a passphrase file that cannot be read',
      [
        ...withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
        '--broker-key-passphrase-file',
        join(certs.dir, 'no-such-passphrase'),
      ],
      {},
      `--broker-key-passphrase-file: cannot read "${join(certs.dir, 'no-such-passphrase')}": ENOENT`,
    ],
    [
      'the flag given twice',
      ['--broker-ca-file', 'a.pem', '--broker-ca-file', 'b.pem'],
      {},
      '--broker-ca-file given twice',
    ],
  ]

  it.each(cases)('%s', async (_, args, env, message) => {
    const result = await run(['--db', missingDb.url, ...args], env)
    expect(result.stderr).toContain(`breakwater relay: ${message}`)
    expect(result.code).toBe(2)
    expect(result.stderr).toContain('usage: breakwater relay')
    expect(result.stdout).toBe('')
    expect(result.all).not.toContain('hunter2')
    expect(result.all).not.toContain(passphrase)
  })

  // The key's PEM text where its path belongs (a secret mounted as a variable, `$(cat key.pem)`):
  // the adapter's refusal of it as a missing file would print the key whole.
  it.each([
    ['BREAKWATER_BROKER_KEY_FILE', [], { BREAKWATER_BROKER_KEY_FILE: certs.client.key }],
    ['--broker-key-file', [`--broker-key-file=${certs.client.key}`], {}],
  ] as const)('refuses the key itself in %s, never showing it', async (source, args, env) => {
    const result = await run(
      [
        '--db',
        missingDb.url,
        '--broker',
        'rediss://127.0.0.1:1',
        '--broker-cert-file',
        certs.client.certFile,
        ...args,
      ],
      env,
    )
    expect(result.stderr).toContain(
      `breakwater relay: ${source} takes the path of a PEM file, not the PEM text itself`,
    )
    expect(result.code).toBe(2)
    expect(result.all).not.toContain(certs.client.key.split('\n')[1]!.slice(0, 16))
  })

  it('refuses a passphrase given to --broker-key-passphrase-env, never showing it', async () => {
    const result = await run([
      '--db',
      missingDb.url,
      ...withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
      '--broker-key-passphrase-env',
      'hunter2 pw',
    ])
    expect(result.code).toBe(2)
    expect(result.all).not.toContain('hunter2')
  })

  it('takes tls:// (NATS over TLS) as a --broker, as openBroker does', async () => {
    // Not refused as an unsupported broker: it gets as far as reading the CA file.
    const missing = join(certs.dir, 'no-such-ca.pem')
    const result = await run([
      '--db',
      missingDb.url,
      '--broker',
      'tls://127.0.0.1:1',
      '--broker-ca-file',
      missing,
    ])
    expect(result.stderr).toContain('breakwater relay: --broker-ca-file: expected a readable PEM')
    expect(result.code).toBe(2)
  })

  it('lists the flags and variables in its help', async () => {
    const result = await run(['--help'])
    expect(result.code).toBe(0)
    for (const text of [
      '--broker-ca-file <f>',
      '--broker-cert-file <f>',
      '--broker-key-file <f>',
      '--broker-key-passphrase-env <var>',
      '--broker-key-passphrase-file <f>',
      'BREAKWATER_BROKER_KEY_PASSPHRASE',
      'BREAKWATER_BROKER_CA_FILE, BREAKWATER_BROKER_CERT_FILE, BREAKWATER_BROKER_KEY_FILE',
      'tls://host:port',
    ])
      expect(result.stdout).toContain(text)
  })
})

describe('breakwater relay: broker TLS files the adapter refuses (exit 2, before the database is opened)', () => {
  // Each names the flag (or variable) and the whole path, even a long one the adapter's own
  // message would shorten.
  const longMissing = join(
    certs.dir,
    'a-folder-name-long-enough-to-be-cut-short',
    'no-such-ca-certificates.pem',
  )
  const cases: Array<[string, string[], Record<string, string>, string]> = [
    [
      'a CA file that does not exist',
      ['--broker', 'rediss://127.0.0.1:1', '--broker-ca-file', longMissing],
      {},
      `--broker-ca-file: expected a readable PEM file of CA certificates (ENOENT: no such file or directory, open '${longMissing}'), got "${longMissing}"`,
    ],
    [
      'a CA file from the environment that holds no certificate',
      ['--broker', 'amqps://127.0.0.1:1'],
      { BREAKWATER_BROKER_CA_FILE: notPem },
      `BREAKWATER_BROKER_CA_FILE: expected a PEM file of CA certificates (it holds no PEM certificate), got "${notPem}"`,
    ],
    [
      'a certificate file that holds a key',
      withClientCert('tls://127.0.0.1:1', certs.client.keyFile, certs.client.keyFile),
      {},
      `--broker-cert-file: expected a PEM client certificate (it holds no PEM certificate), got "${certs.client.keyFile}"`,
    ],
    [
      'a key file that holds a certificate',
      withClientCert('nats://127.0.0.1:1', certs.client.certFile),
      {},
      `--broker-key-file: expected a PEM private key (it holds no PEM private key), got "${certs.client.certFile}"`,
    ],
    [
      'a key that does not match the certificate',
      withClientCert('rediss://127.0.0.1:1', certs.server.keyFile),
      {},
      `--broker-key-file: expected the client certificate's private key: this key does not match the certificate, got "${certs.server.keyFile}"`,
    ],
    [
      'an encrypted key without a passphrase',
      withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
      {},
      `--broker-key-file: "${encryptedKeyFile}" is an encrypted key: set its passphrase in BREAKWATER_BROKER_KEY_PASSPHRASE or pass --broker-key-passphrase-file`,
    ],
    [
      'a wrong passphrase from the default variable',
      withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
      { BREAKWATER_BROKER_KEY_PASSPHRASE: 'hunter2-pw' },
      `the passphrase in BREAKWATER_BROKER_KEY_PASSPHRASE does not decrypt --broker-key-file "${encryptedKeyFile}"`,
    ],
    [
      'a wrong passphrase from a file',
      [
        ...withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
        '--broker-key-passphrase-file',
        wrongPassphraseFile,
      ],
      {},
      `the passphrase in --broker-key-passphrase-file "${wrongPassphraseFile}" does not decrypt --broker-key-file "${encryptedKeyFile}"`,
    ],
  ]

  it.each(cases)('%s', async (_, args, env, message) => {
    const result = await run(['--db', missingDb.url, ...args], env)
    expect(result.stderr).toContain(`breakwater relay: ${message}`)
    expect(result.code).toBe(2)
    // A message, not a stack trace; never the key or the passphrase.
    expect(result.all).not.toMatch(/^\s+at /m)
    expect(result.all).not.toContain('hunter2')
    expect(result.all).not.toContain(certs.server.key.split('\n')[1]!.slice(0, 16))
    expect(result.all).not.toContain('no such database file')
  })

  it('accepts the same files when they are right: it gets as far as the database', async () => {
    const result = await run(
      [
        '--db',
        missingDb.url,
        '--broker-ca-file',
        certs.ca.certFile,
        ...withClientCert('rediss://127.0.0.1:1', encryptedKeyFile),
        '--broker-key-passphrase-file',
        passphraseFile,
      ],
      {},
    )
    expect(result.stderr).toContain('no such database file')
    expect(result.code).toBe(1)
  })
})
