// An OpenID Connect provider for Capstan's end-to-end tests: node's
// oidc-provider with its development login and consent pages, one client
// (capstan / capstan-secret) redirecting to $REDIRECT_URI, and accounts
// whose groups are `devs` for alice and `ops` for everyone else.
// Listens on 127.0.0.1:$PORT and prints "ready <issuer>" once it does.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'capstan',
    client_secret: 'capstan-secret',
    redirect_uris: [process.env.REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username'],
    groups: ['groups'],
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.org`,
          email_verified: true,
          preferred_username: id,
          groups: id === 'alice' ? ['devs'] : ['ops'],
        };
      },
    };
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['capstan-test-cookie-key'] },
});
provider.proxy = false;
provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
