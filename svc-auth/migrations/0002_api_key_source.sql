-- Where the key's owner was known when the key was made (`htpasswd`,
-- `ldap`, `openid`, `certificate`); a key of an htpasswd user stops working
-- when the user leaves the file.
ALTER TABLE api_keys ADD COLUMN source TEXT NOT NULL DEFAULT '';
