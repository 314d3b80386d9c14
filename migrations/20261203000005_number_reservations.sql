-- The durable high-water mark of every number scope (see
-- src/writebehind/numbering.rs). A scope is an application's chat counter
-- (chat_number = 0) or the message counter of one of its chats (its
-- number). Redis hands out a number only at or below `reserved_to`, which is
-- written here first (the hi/lo pattern), so whatever Redis loses, a counter
-- restarts at `reserved_to` and no number is handed out twice. A scope
-- without a row has the implicit first block (numbers 1 to 16). The chat
-- need not be stored yet: its records may still be buffered.
CREATE TABLE number_reservations (
    application_id BIGINT UNSIGNED NOT NULL,
    chat_number    BIGINT NOT NULL,
    reserved_to    BIGINT NOT NULL,
    updated_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (application_id, chat_number),
    CONSTRAINT number_reservations_application_fk FOREIGN KEY (application_id)
        REFERENCES applications (id) ON DELETE CASCADE
) ENGINE = InnoDB;

-- The numbers a counter skipped when it restarted at its reservation after
-- Redis may have lost data: one row per scope and loss event. A number in a
-- range here that MariaDB does not hold was handed out before the loss and
-- lost with it, or never handed out: nothing is, or will be, stored under it,
-- and a lookup answers 404 at once, saying so.
CREATE TABLE skipped_numbers (
    application_id BIGINT UNSIGNED NOT NULL,
    chat_number    BIGINT NOT NULL,
    first_number   BIGINT NOT NULL,
    last_number    BIGINT NOT NULL,
    skipped_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (application_id, chat_number, first_number),
    CONSTRAINT skipped_numbers_application_fk FOREIGN KEY (application_id)
        REFERENCES applications (id) ON DELETE CASCADE
) ENGINE = InnoDB;
