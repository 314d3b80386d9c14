-- Applications, chats and messages.
--
-- Clients only ever see `applications.token` and the per-scope `number`s;
-- the `id`s are internal join keys.
--
-- Chats and messages are soft-deleted (`deleted_at`): the row stays as a
-- tombstone so that (1) a number is never handed out twice, even when Redis
-- loses its counters and they are re-seeded from MAX(number), and (2) a
-- write-behind batch replayed after a crash cannot resurrect a deleted record
-- (its idempotent INSERT hits the tombstone's unique key and changes nothing).
-- A deleted chat's messages are removed for real; its tombstone is enough.
-- Deleting an application removes everything below it (ON DELETE CASCADE).

CREATE TABLE applications (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    token       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    chats_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at  DATETIME(6) NOT NULL,
    updated_at  DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY applications_token_key (token),
    -- GET /applications lists by creation.
    KEY applications_created_idx (created_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE chats (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    application_id BIGINT UNSIGNED NOT NULL,
    number         BIGINT NOT NULL,
    messages_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
    created_at     DATETIME(6) NOT NULL,
    updated_at     DATETIME(6) NOT NULL,
    deleted_at     DATETIME(6) NULL,
    PRIMARY KEY (id),
    -- The idempotency key of a flushed chat, and the lookup and list order of the API.
    UNIQUE KEY chats_application_number_key (application_id, number),
    CONSTRAINT chats_application_fk FOREIGN KEY (application_id)
        REFERENCES applications (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE messages (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    chat_id    BIGINT UNSIGNED NOT NULL,
    number     BIGINT NOT NULL,
    -- MEDIUMTEXT: TEXT stops at 65,535 bytes and MAX_MESSAGE_BYTES defaults to 65,536.
    body       MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    deleted_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    -- The idempotency key of a flushed message, and the lookup and list order of the API.
    UNIQUE KEY messages_chat_number_key (chat_id, number),
    CONSTRAINT messages_chat_fk FOREIGN KEY (chat_id)
        REFERENCES chats (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
